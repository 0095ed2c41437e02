// The STATE module through the SDK under test: the six `state::*` functions, update ops, the
// `state` trigger type, compare-and-set, dead letters and persistence (shared/spec/state.md §2–§5,
// §11 checks 1–22, 24–32, 34, with Trine's choices: no event for deleting a missing key, fractional
// `by`, update results size-guarded, ordered at-least-once delivery with retries and dead letters).

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  RawClient,
  listFunctions,
  listTriggers,
  settle,
  sleep,
  startEngine,
  uniq,
  waitFor,
  withTimeout,
} from '../harness.mjs';
import { Recorder, Workers, ready } from '../common.mjs';

const STATE_FUNCTIONS = ['state::set', 'state::get', 'state::delete', 'state::update', 'state::list', 'state::list_groups'];
const DOC_URL = 'https://iii.dev/docs/workers/iii-state#error-codes';
// Trine's integer range is [i64::MIN, u64::MAX] (like the reference's u64 retry); beyond it an
// increment/decrement reports `<op>.overflow`.
const U64_MAX = '18446744073709551615';
const I64_MIN = '-9223372036854775808';
const show = (v, n = 300) => {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > n ? `${s.slice(0, n)}…` : s;
};

/**
 * A null result: the engine omits `result` when it is null (protocol.md §3, as the reference does),
 * so Node SDKs resolve `undefined`; a literal null is accepted too.
 */
function assertNone(value, message = 'expected no value (null)') {
  assert.ok(value === null || value === undefined, `${message}: got ${show(value)}`);
}

/** `depth` nested objects: nested(1) = {"a":1}. */
function nested(depth) {
  let v = 1;
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

/** Byte-wise (UTF-8) string comparison, the order list_groups promises. */
const byteCompare = (x, y) => Buffer.compare(Buffer.from(x, 'utf8'), Buffer.from(y, 'utf8'));

/** For consecutive events of one key: event[n+1].old_value deep-equals event[n].new_value. */
function assertChain(events, label) {
  for (let i = 1; i < events.length; i++) {
    assert.deepEqual(
      events[i].old_value,
      events[i - 1].new_value,
      `${label}: event ${i} old_value must equal event ${i - 1} new_value (per-key order); events: ${show(events, 3000)}`,
    );
  }
}

/** Drops a redelivery (at-least-once) that repeats the event just before it. */
function dropConsecutiveDuplicates(events) {
  const out = [];
  for (const e of events) {
    const prev = out[out.length - 1];
    if (prev && JSON.stringify(prev) === JSON.stringify(e)) continue;
    out.push(e);
  }
  return out;
}

/** Sends an invokefunction whose `data` is literal JSON text (exact 64-bit integers). */
async function rawInvokeText(raw, functionId, dataText, timeoutMs = 5000) {
  const invocationId = randomUUID();
  const since = raw.mark();
  await raw.send(
    `{"type":"invokefunction","invocation_id":"${invocationId}","function_id":"${functionId}","data":${dataText}}`,
  );
  const json = await raw.next((m) => m.type === 'invocationresult' && m.invocation_id === invocationId, {
    since,
    timeoutMs,
    what: `invocationresult for ${functionId}`,
  });
  const frame = raw.frames.slice(since).find((f) => f.json === json);
  return { json, text: frame.text };
}

export function stateSuite(a) {
  /** State calls through the SDK's trigger(). */
  function client(iii) {
    const call = (functionId, payload, extra = {}) => iii.trigger({ function_id: functionId, payload, ...extra });
    return {
      call,
      set: (scope, key, value, extra = {}) => call('state::set', { scope, key, value, ...extra }),
      get: (scope, key, extra = {}) => call('state::get', { scope, key, ...extra }),
      del: (scope, key, extra = {}) => call('state::delete', { scope, key, ...extra }),
      update: (scope, key, ops, extra = {}) => call('state::update', { scope, key, ops, ...extra }),
      list: (scope) => call('state::list', { scope }),
      groups: async () => (await call('state::list_groups', {})).groups,
      deadLetters: async (filter = {}) => (await call('engine::state::dead_letters::list', filter)).dead_letters,
      discard: (input) => call('engine::state::dead_letters::discard', input),
      /** The call must fail with invocation error `code`; returns the error. */
      async fails(functionId, payload, code, extra = {}) {
        const r = await settle(call(functionId, payload, extra));
        assert.equal(
          r.ok,
          false,
          `${functionId} ${show(payload, 200)} must fail with ${code}, got result ${show(r.value, 200)}`,
        );
        a.assertInvocationError(r.error, code);
        return r.error;
      },
    };
  }

  /** Exact list of [op_index, code] in an update result's `errors`, each with message and doc_url. */
  function assertOpErrors(result, expected, label = 'update') {
    if (expected.length === 0) {
      assert.ok(!('errors' in result), `${label}: no errors key when nothing failed, got ${show(result)}`);
      return;
    }
    assert.ok(Array.isArray(result.errors), `${label}: errors array expected, got ${show(result)}`);
    assert.deepEqual(
      result.errors.map((e) => [e.op_index, e.code]),
      expected,
      `${label}: errors ${show(result.errors, 1000)}`,
    );
    for (const e of result.errors) {
      assert.equal(typeof e.message, 'string', `${label}: message of ${e.code}`);
      assert.ok(e.message.length > 0, `${label}: message of ${e.code} is empty`);
      assert.equal(e.doc_url, DOC_URL, `${label}: doc_url of ${e.code}`);
    }
  }

  async function waitForStateTrigger(raw, functionId) {
    return waitFor(
      async () =>
        (await listTriggers(raw, true)).find((t) => t.function_id === functionId && t.trigger_type === 'state'),
      5000,
      { message: `state trigger for ${functionId} listed by engine::triggers::list` },
    );
  }

  /**
   * Registers a handler on `iii` and binds it to a `state` trigger with `config`. The handler records
   * every call (attempts included) and then runs `onEvent` (which may throw or be slow).
   */
  async function watch(iii, raw, config, { fnId, onEvent, drop } = {}) {
    const id = fnId ?? `${uniq('watch')}::on-state`;
    const rec = new Recorder();
    a.fn(iii, id, async (payload) => {
      rec.push(payload);
      if (onEvent) return onEvent(payload);
      return { seen: true };
    });
    const trigger = iii.registerTrigger({ type: 'state', function_id: id, config });
    drop?.push(trigger);
    await ready(a, iii, raw);
    const listed = await waitForStateTrigger(raw, id);
    return { id, rec, trigger, triggerId: listed.id, forKey: (k) => rec.calls.filter((e) => e.key === k) };
  }

  // -------------------------------------------------------------------------------------------
  describe(`state functions with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let S;

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      const w = workers.connect(engine.workerUrl, { name: uniq('state-caller-') });
      await ready(a, w, raw);
      S = client(w);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('the six state functions are registered by the engine (§3)', async () => {
      const ids = new Set((await listFunctions(raw)).map((f) => f.function_id));
      for (const id of STATE_FUNCTIONS) assert.ok(ids.has(id), `${id} missing from engine::functions::list`);
    });

    test('get / set / data alias / delete: reference shapes (§11 1–6)', async () => {
      const s = uniq('s');
      assertNone(await S.get(s, 'nope'), 'check 1: missing key → null');
      assert.deepEqual(await S.set(s, 'k', { a: 1 }), { old_value: null, new_value: { a: 1 } }, 'check 2');
      assert.deepEqual(await S.set(s, 'k', { a: 2 }), { old_value: { a: 1 }, new_value: { a: 2 } }, 'check 3');
      assert.deepEqual(await S.get(s, 'k'), { a: 2 });

      assert.deepEqual(await S.call('state::set', { scope: s, key: 'k2', data: 5 }), { old_value: null, new_value: 5 });
      assert.equal(await S.get(s, 'k2'), 5, 'check 4: data alias stored');

      await S.fails('state::set', { scope: s, key: 'k3' }, 'deserialization_error');
      assertNone(await S.get(s, 'k3'), 'check 5: nothing written');

      // Every JSON value is storable, null included (a stored null reads like a missing key).
      const values = ['text ✓ é', 0, -1.25, true, false, [1, [2, { x: null }]], { deep: { er: [{}] } }, null];
      for (const [i, v] of values.entries()) {
        assert.deepEqual(await S.set(s, `v${i}`, v), { old_value: null, new_value: v });
        if (v === null) assertNone(await S.get(s, `v${i}`), 'stored null');
        else assert.deepEqual(await S.get(s, `v${i}`), v);
      }
      assert.deepEqual(await S.set(s, 'v7', 'was null'), { old_value: null, new_value: 'was null' });

      // Keys and scopes are opaque: separators and unicode are literal.
      assert.deepEqual(await S.set(s, 'a:b/c.d ü', 1), { old_value: null, new_value: 1 });
      assert.equal(await S.get(s, 'a:b/c.d ü'), 1);
      assertNone(await S.get(s, 'A:B/C.D Ü'), 'keys are case-sensitive');

      assert.deepEqual(await S.del(s, 'k'), { a: 2 }, 'check 6: delete returns the raw old value');
      assertNone(await S.get(s, 'k'));
      assertNone(await S.del(s, 'k'), 'second delete → null');
      assertNone(await S.del(uniq('never'), 'x'), 'delete in a scope that never existed → null');
    });

    test('list: values only, insertion order, overwrite keeps position, re-create moves to the end (§11 7–8)', async () => {
      const s = uniq('order');
      for (const id of ['c', 'a', 'b']) await S.set(s, id, { id });
      assert.deepEqual(await S.list(s), [{ id: 'c' }, { id: 'a' }, { id: 'b' }]);
      await S.set(s, 'a', { id: 'a', v: 2 });
      assert.deepEqual(await S.list(s), [{ id: 'c' }, { id: 'a', v: 2 }, { id: 'b' }], 'overwrite keeps the position');
      await S.update(s, 'b', [{ type: 'set', path: 'v', value: 3 }]);
      assert.deepEqual(await S.list(s), [{ id: 'c' }, { id: 'a', v: 2 }, { id: 'b', v: 3 }], 'update keeps the position');
      await S.del(s, 'a');
      await S.set(s, 'a', { id: 'a', v: 4 });
      assert.deepEqual(await S.list(s), [{ id: 'c' }, { id: 'b', v: 3 }, { id: 'a', v: 4 }], 'delete + re-create moves to the end');
      await S.update(s, 'd', [{ type: 'set', path: 'id', value: 'd' }]);
      assert.deepEqual((await S.list(s)).at(-1), { id: 'd' }, 'update-created key is appended');
      assert.deepEqual(await S.list(uniq('empty')), [], 'check 8: unknown scope → []');
      for (const k of ['c', 'b', 'a', 'd']) await S.del(s, k);
      assert.deepEqual(await S.list(s), [], 'emptied scope → []');
    });

    test('list_groups: {groups} sorted and unique; a scope disappears with its last key (§11 9, T2)', async () => {
      const g1 = uniq('grp-b-');
      const g2 = uniq('grp-a-');
      await S.set(g1, 'x', 1);
      await S.set(g2, 'y', 1);
      await S.set(g2, 'z', 1);
      const res = await S.call('state::list_groups', {});
      assert.deepEqual(Object.keys(res), ['groups']);
      const groups = res.groups;
      assert.ok(groups.includes(g1) && groups.includes(g2), `groups ${show(groups)}`);
      assert.deepEqual([...groups].sort(byteCompare), groups, 'sorted ascending');
      assert.equal(new Set(groups).size, groups.length, 'unique');
      assert.ok(Array.isArray((await S.call('state::list_groups', { ignored: true })).groups), 'extra fields ignored');

      await S.del(g1, 'x');
      assert.ok(!(await S.groups()).includes(g1), 'T2: scope gone as soon as its last key is deleted');
      await S.del(g2, 'y');
      assert.ok((await S.groups()).includes(g2), 'scope with a key left is still listed');
      await S.del(g2, 'z');
      assert.ok(!(await S.groups()).includes(g2));

      // A key holding null (remove at the root) is still a key: its scope stays listed.
      const g3 = uniq('grp-null-');
      await S.update(g3, 'k', [{ type: 'remove' }]);
      assert.ok((await S.groups()).includes(g3));
      assert.deepEqual(await S.list(g3), [null]);
    });

    test('update on missing keys: increment / decrement create fields (§11 10–12, T3)', async () => {
      const s = uniq('upd');
      assert.deepEqual(await S.update(s, 'm1', [{ type: 'increment', path: 'n', by: 2 }]), {
        old_value: null,
        new_value: { n: 2 },
      }, 'check 10 (no errors key)');
      assert.deepEqual(await S.update(s, 'm2', [{ type: 'increment', path: '', by: 3 }]), {
        old_value: null,
        new_value: 3,
      }, 'check 11');
      assert.deepEqual(await S.update(s, 'm3', [{ type: 'decrement', path: 'n', by: 2 }]), {
        old_value: null,
        new_value: { n: -2 },
      }, 'check 12');
      assert.deepEqual(await S.update(s, 'metrics', [{ type: 'increment', path: 'total', by: -1 }]), {
        old_value: null,
        new_value: { total: -1 },
      }, 'seed metrics: increment by -1 on a missing key');
      assert.deepEqual(await S.update(s, 'm1', [{ type: 'increment', path: 'n', by: 5 }, { type: 'decrement', path: 'n', by: 1 }]), {
        old_value: { n: 2 },
        new_value: { n: 6 },
      });
      assert.deepEqual(await S.update(s, 'empty-ops', []), { old_value: null, new_value: {} }, 'empty ops create {}');
      assert.deepEqual(await S.get(s, 'empty-ops'), {});
    });

    test('update merge: shallow, nested (destructive), root on non-object ignored; not_an_object still writes (§11 13)', async () => {
      const s = uniq('merge');
      const r = await S.update(s, 'k', [{ type: 'merge', value: [1] }]);
      assertOpErrors(r, [[0, 'merge.value.not_an_object']], 'check 13');
      assert.deepEqual(r.errors[0].op_index, 0);
      assert.deepEqual(r.old_value, null);
      assert.deepEqual(r.new_value, {});
      assert.deepEqual(await S.get(s, 'k'), {}, 'value still written');

      await S.set(s, 'm', { a: 1, b: { c: 1 } });
      assert.deepEqual((await S.update(s, 'm', [{ type: 'merge', path: '', value: { b: { d: 2 }, e: 3 } }])).new_value, {
        a: 1,
        b: { d: 2 },
        e: 3,
      }, 'root merge is shallow');
      await S.set(s, 'n', { a: 5 });
      assert.deepEqual((await S.update(s, 'n', [{ type: 'merge', path: ['a', 'b'], value: { c: 1 } }])).new_value, {
        a: { b: { c: 1 } },
      }, '§4.6: the non-object intermediate is replaced');
      await S.set(s, 'five', 5);
      const ignored = await S.update(s, 'five', [{ type: 'merge', value: { a: 1 } }]);
      assert.deepEqual(ignored, { old_value: 5, new_value: 5 }, 'root merge on a non-object root is ignored silently');
    });

    test('update path and value validation: per-op error codes, value unchanged (§11 14–15)', async () => {
      const s = uniq('validate');
      const base = { keep: 1 };
      await S.set(s, 'k', base);
      const seg257 = 'x'.repeat(257);
      const manyKeys = Object.fromEntries(Array.from({ length: 1025 }, (_, i) => [`k${i}`, i]));
      const cases = [
        ['33-segment merge path', { type: 'merge', path: Array.from({ length: 33 }, (_, i) => `p${i}`), value: { a: 1 } }, 'merge.path.too_deep'],
        ['__proto__ segment', { type: 'merge', path: ['__proto__'], value: { a: 1 } }, 'merge.path.proto_polluted'],
        ['constructor segment', { type: 'merge', path: ['a', 'constructor'], value: { a: 1 } }, 'merge.path.proto_polluted'],
        ['prototype string path', { type: 'merge', path: 'prototype', value: { a: 1 } }, 'merge.path.proto_polluted'],
        ['empty segment', { type: 'merge', path: ['a', ''], value: { a: 1 } }, 'merge.path.empty_segment'],
        ['257-byte segment', { type: 'merge', path: [seg257], value: { a: 1 } }, 'merge.path.segment_too_long'],
        ['1025 keys', { type: 'merge', value: manyKeys }, 'merge.value.too_many_keys'],
        ['__proto__ value key', { type: 'merge', value: JSON.parse('{"__proto__":{"x":1}}') }, 'merge.value.proto_polluted'],
        ['17-deep merge value', { type: 'merge', value: nested(17) }, 'merge.value.too_deep'],
        ['append 33 segments', { type: 'append', path: Array.from({ length: 33 }, () => 'q'), value: 1 }, 'append.path.too_deep'],
        ['append __proto__', { type: 'append', path: ['ok', '__proto__'], value: 1 }, 'append.path.proto_polluted'],
      ];
      for (const [name, op, code] of cases) {
        const r = await S.update(s, 'k', [op]);
        assertOpErrors(r, [[0, code]], name);
        assert.deepEqual(r.old_value, base, name);
        assert.deepEqual(r.new_value, base, `${name}: new_value unchanged`);
        assert.deepEqual(await S.get(s, 'k'), base, `${name}: stored value unchanged`);
      }
      // Just inside the limits: 32 segments, 256-byte segment, 1024 keys, depth 16.
      const path32 = Array.from({ length: 32 }, (_, i) => `p${i}`);
      const ok = await S.update(s, 'deep', [
        { type: 'merge', path: path32, value: { leaf: true } },
        { type: 'merge', path: ['x'.repeat(256)], value: { a: 1 } },
        { type: 'merge', path: ['wide'], value: Object.fromEntries(Array.from({ length: 1024 }, (_, i) => [`k${i}`, i])) },
        { type: 'merge', path: ['nest'], value: nested(16) },
      ]);
      assertOpErrors(ok, [], 'limits');
      let cur = ok.new_value;
      for (const seg of path32) cur = cur[seg];
      assert.deepEqual(cur, { leaf: true });
      assert.equal(Object.keys(ok.new_value.wide).length, 1024);
      assert.deepEqual(ok.new_value.nest, nested(16));
    });

    test('update set / increment / decrement / remove errors (§11 16)', async () => {
      const s = uniq('ops');
      await S.set(s, 'k', { name: 'x', nil: null });
      let r = await S.update(s, 'k', [{ type: 'set', path: '__proto__', value: 1 }]);
      assertOpErrors(r, [[0, 'set.path.proto_polluted']]);
      r = await S.update(s, 'k', [{ type: 'increment', path: 'name', by: 1 }]);
      assertOpErrors(r, [[0, 'increment.not_number']]);
      r = await S.update(s, 'k', [{ type: 'increment', path: 'nil', by: 1 }]);
      assertOpErrors(r, [[0, 'increment.not_number']], 'null field is not a number');
      r = await S.update(s, 'k', [{ type: 'decrement', path: 'name', by: 1 }]);
      assertOpErrors(r, [[0, 'decrement.not_number']]);
      r = await S.update(s, 'k', [{ type: 'increment', path: '', by: 1 }]);
      assertOpErrors(r, [[0, 'increment.not_number']], 'root increment on an object');
      assert.deepEqual(await S.get(s, 'k'), { name: 'x', nil: null });

      await S.set(s, 'five', 5);
      r = await S.update(s, 'five', [
        { type: 'set', path: 'x', value: 1 },
        { type: 'increment', path: 'n', by: 1 },
        { type: 'decrement', path: 'n', by: 1 },
        { type: 'remove', path: 'x' },
        { type: 'append', path: 'x', value: 1 },
        { type: 'increment', path: '', by: 2 },
      ]);
      assertOpErrors(r, [
        [0, 'set.target_not_object'],
        [1, 'increment.target_not_object'],
        [2, 'decrement.target_not_object'],
        [3, 'remove.target_not_object'],
        [4, 'append.target_not_object'],
      ]);
      assert.deepEqual(r.new_value, 7, 'ops after failed ones still apply (best effort)');

      // Dots are not separators; remove of an absent field is silent.
      r = await S.update(s, 'dots', [{ type: 'set', path: 'user.name', value: 'v' }, { type: 'remove', path: 'absent' }]);
      assert.deepEqual(r, { old_value: null, new_value: { 'user.name': 'v' } });
    });

    test('update append: strings, arrays, array paths (§11 17, 32, §4.6)', async () => {
      const s = uniq('append');
      let r = await S.update(s, 'k', [{ type: 'append', path: 't', value: 'x' }]);
      assert.deepEqual(r, { old_value: null, new_value: { t: 'x' } }, 'string on a missing field');
      r = await S.update(s, 'k', [{ type: 'append', path: 't', value: 1 }]);
      assertOpErrors(r, [[0, 'append.type_mismatch']]);
      assert.deepEqual(r.new_value, { t: 'x' });
      r = await S.update(s, 'k', [{ type: 'append', path: 'list', value: { o: 1 } }, { type: 'append', path: 'list', value: 2 }]);
      assert.deepEqual(r.new_value, { t: 'x', list: [{ o: 1 }, 2] });
      r = await S.update(s, 'nested', [{ type: 'append', path: ['p', 'q'], value: 'x' }]);
      assert.deepEqual(r, { old_value: null, new_value: { p: { q: ['x'] } } }, 'check 32: array path');
      r = await S.update(s, 'nested', [{ type: 'append', path: ['p', 'q'], value: 'y' }]);
      assert.deepEqual(r.new_value, { p: { q: ['x', 'y'] } });

      await S.set(s, 'ex', { events: [], text: 'hi' });
      r = await S.update(s, 'ex', [
        { type: 'append', path: 'events', value: { k: 1 } },
        { type: 'append', path: 'text', value: ' there' },
        { type: 'append', path: 'text', value: 7 },
      ]);
      assert.deepEqual(r.new_value, { events: [{ k: 1 }], text: 'hi there' });
      assertOpErrors(r, [[2, 'append.type_mismatch']], '§4.6 example');
      await S.set(s, 'num', { n: 1 });
      assertOpErrors(await S.update(s, 'num', [{ type: 'append', path: 'n', value: 2 }]), [[0, 'append.type_mismatch']]);
    });

    test('update remove at the root stores null (§11 18)', async () => {
      const s = uniq('remove');
      await S.set(s, 'k', { a: 1 });
      assert.deepEqual(await S.update(s, 'k', [{ type: 'remove', path: '' }]), { old_value: { a: 1 }, new_value: null });
      assertNone(await S.get(s, 'k'));
      assert.deepEqual(await S.list(s), [null], 'the key stays, holding null');
    });

    test('numbers: fractional by, float arithmetic, integer overflow codes (§11 19)', async () => {
      const s = uniq('num');
      assert.deepEqual(await S.update(s, 'f', [{ type: 'increment', path: 'n', by: 1.5 }]), {
        old_value: null,
        new_value: { n: 1.5 },
      }, 'fractional by accepted');
      await S.set(s, 'g', { n: 5.5 });
      assert.deepEqual((await S.update(s, 'g', [{ type: 'increment', path: 'n', by: 1 }])).new_value, { n: 6.5 });
      await S.set(s, 'h', { n: 1 });
      assert.deepEqual((await S.update(s, 'h', [{ type: 'decrement', path: 'n', by: 0.25 }])).new_value, { n: 0.75 });
      assert.deepEqual((await S.update(s, 'i', [{ type: 'increment', by: 2 }, { type: 'increment', by: 3 }])).new_value, 5);

      // Exact 64-bit limits need literal JSON text (JS numbers cannot carry them); the update goes
      // through the SDK.
      const setMax = await rawInvokeText(raw, 'state::set', `{"scope":"${s}","key":"max","value":{"n":${U64_MAX}}}`);
      assert.equal(setMax.json.error, undefined, show(setMax.json));
      let r = await S.update(s, 'max', [{ type: 'increment', path: 'n', by: 1 }]);
      assertOpErrors(r, [[0, 'increment.overflow']]);
      let got = await rawInvokeText(raw, 'state::get', `{"scope":"${s}","key":"max"}`);
      assert.match(got.text, new RegExp(`"n":\\s*${U64_MAX}\\b`), `value unchanged after overflow: ${got.text}`);

      const setMin = await rawInvokeText(raw, 'state::set', `{"scope":"${s}","key":"min","value":{"n":${I64_MIN}}}`);
      assert.equal(setMin.json.error, undefined, show(setMin.json));
      r = await S.update(s, 'min', [{ type: 'decrement', path: 'n', by: 1 }]);
      assertOpErrors(r, [[0, 'decrement.overflow']]);
      got = await rawInvokeText(raw, 'state::get', `{"scope":"${s}","key":"min"}`);
      assert.match(got.text, new RegExp(`"n":\\s*${I64_MIN}\\b`), `value unchanged after overflow: ${got.text}`);

      await S.fails('state::update', { scope: s, key: 'h', ops: [{ type: 'multiply', path: 'n', by: 2 }] }, 'deserialization_error');
      await S.fails('state::update', { scope: s, key: 'h', ops: [{ type: 'increment', path: 'n', by: '2' }] }, 'deserialization_error');
      assert.deepEqual(await S.get(s, 'h'), { n: 0.75 });
    });

    test('T1: omitted or null path means the root for every op (§11 31)', async () => {
      const s = uniq('t1');
      let r = await S.update(s, 'a', [{ type: 'set', value: { a: 1 } }]);
      assert.deepEqual(r, { old_value: null, new_value: { a: 1 } }, 'set without path');
      r = await S.update(s, 'a', [{ type: 'set', path: null, value: { b: 2 } }]);
      assert.deepEqual(r, { old_value: { a: 1 }, new_value: { b: 2 } }, 'set with path null');
      r = await S.update(s, 'a', [{ type: 'set', path: 'f' }]);
      assert.deepEqual(r.new_value, { b: 2, f: null }, 'set without value stores null');

      assert.deepEqual((await S.update(s, 'n', [{ type: 'increment', by: 2 }])).new_value, 2);
      assert.deepEqual((await S.update(s, 'n', [{ type: 'increment', path: null, by: 3 }])).new_value, 5);
      assert.deepEqual((await S.update(s, 'n', [{ type: 'decrement', by: 1 }])).new_value, 4);
      assert.deepEqual((await S.update(s, 'n', [{ type: 'decrement', path: null, by: 1 }])).new_value, 3);
      assert.deepEqual((await S.update(s, 'neg', [{ type: 'decrement', by: 2 }])).new_value, -2);

      r = await S.update(s, 'n', [{ type: 'remove' }]);
      assert.deepEqual(r, { old_value: 3, new_value: null });
      assertNone(await S.get(s, 'n'));
      await S.set(s, 'n2', 1);
      assert.deepEqual((await S.update(s, 'n2', [{ type: 'remove', path: null }])).new_value, null);

      assert.deepEqual((await S.update(s, 'ap', [{ type: 'append', value: 'x' }])).new_value, 'x');
      assert.deepEqual((await S.update(s, 'ap', [{ type: 'append', path: null, value: 'y' }])).new_value, 'xy');
      assert.deepEqual((await S.update(s, 'arr', [{ type: 'append', value: 1 }, { type: 'append', value: 2 }])).new_value, [1, 2]);
      assert.deepEqual((await S.update(s, 'mg', [{ type: 'merge', value: { a: 1 } }])).new_value, { a: 1 });
      assert.deepEqual((await S.update(s, 'mg', [{ type: 'merge', path: null, value: { b: 2 } }])).new_value, { a: 1, b: 2 });
    });

    test('compare-and-set: create-only, conflicts, versions increase, shapes (Trine)', async () => {
      const s = uniq('cas');
      // Without expected_version / with_meta: exactly the reference shapes.
      assert.deepEqual(await S.set(s, 'plain', 1), { old_value: null, new_value: 1 });
      assert.deepEqual(await S.update(s, 'plain', [{ type: 'increment', by: 1 }]), { old_value: 1, new_value: 2 });
      assert.equal(await S.get(s, 'plain'), 2);
      assert.equal(await S.del(s, 'plain'), 2);

      assert.deepEqual(await S.get(s, 'k', { with_meta: true }), { value: null, version: 0 }, 'missing key: version 0');
      assert.deepEqual(await S.del(s, 'k', { with_meta: true }), { old_value: null, version: 0 });

      const r1 = await S.set(s, 'k', { v: 1 }, { expected_version: 0 });
      assert.deepEqual(Object.keys(r1).sort(), ['new_value', 'old_value', 'version']);
      assert.equal(r1.old_value, null);
      assert.deepEqual(r1.new_value, { v: 1 });
      assert.ok(Number.isInteger(r1.version) && r1.version > 0, `version ${r1.version}`);

      await S.fails('state::set', { scope: s, key: 'k', value: { v: 'dup' }, expected_version: 0 }, 'VERSION_CONFLICT');
      assert.deepEqual(await S.get(s, 'k', { with_meta: true }), { value: { v: 1 }, version: r1.version });

      const r2 = await S.set(s, 'k', { v: 2 }, { expected_version: r1.version });
      assert.deepEqual(r2.old_value, { v: 1 });
      assert.ok(r2.version > r1.version, `versions increase: ${r1.version} → ${r2.version}`);

      await S.fails('state::set', { scope: s, key: 'k', value: 'stale', expected_version: r1.version }, 'VERSION_CONFLICT');
      await S.fails('state::update', { scope: s, key: 'k', ops: [{ type: 'set', path: 'v', value: 'stale' }], expected_version: r1.version }, 'VERSION_CONFLICT');
      await S.fails('state::delete', { scope: s, key: 'k', expected_version: r1.version }, 'VERSION_CONFLICT');
      assert.deepEqual(await S.get(s, 'k'), { v: 2 }, 'nothing written by the conflicts');

      const r3 = await S.update(s, 'k', [{ type: 'increment', path: 'v', by: 1 }], { expected_version: r2.version });
      assert.deepEqual(r3.old_value, { v: 2 });
      assert.deepEqual(r3.new_value, { v: 3 });
      assert.ok(!('errors' in r3));
      assert.ok(r3.version > r2.version);

      const r4 = await S.set(s, 'k', { v: 4 }, { with_meta: true });
      assert.deepEqual(r4.old_value, { v: 3 });
      assert.ok(r4.version > r3.version, 'with_meta alone reports the new version');
      const r5 = await S.update(s, 'k', [{ type: 'increment', path: 'name', by: 1 }, { type: 'set', path: 'x', value: 1 }], { with_meta: true });
      assert.ok(r5.version > r4.version);
      await S.set(s, 'k', { v: 4 }, { expected_version: r5.version });
      const meta = await S.get(s, 'k', { with_meta: true });
      assert.deepEqual(meta.value, { v: 4 });
      assert.ok(meta.version > r5.version);

      const d = await S.del(s, 'k', { expected_version: meta.version });
      assert.deepEqual(d, { old_value: { v: 4 }, version: meta.version }, 'delete reports the deleted record version');
      assert.deepEqual(await S.get(s, 'k', { with_meta: true }), { value: null, version: 0 });
      const again = await S.set(s, 'k', 'again', { expected_version: 0 });
      assert.ok(again.version > meta.version, 'create-only works again after delete; versions keep increasing (no ABA)');

      // Missing keys: only expected_version 0 matches.
      await S.fails('state::update', { scope: s, key: 'none', ops: [{ type: 'increment', path: 'n', by: 1 }], expected_version: 5 }, 'VERSION_CONFLICT');
      await S.fails('state::delete', { scope: s, key: 'none', expected_version: 1 }, 'VERSION_CONFLICT');
      assertNone(await S.get(s, 'none'), 'conflicting update did not create the key');
      const u0 = await S.update(s, 'none', [{ type: 'increment', path: 'n', by: 1 }], { expected_version: 0 });
      assert.deepEqual([u0.old_value, u0.new_value], [null, { n: 1 }]);
      assert.ok(u0.version > 0);

      await S.fails('state::set', { scope: s, key: 'k', value: 1, expected_version: '1' }, 'deserialization_error');
      assert.equal(await S.get(s, 'k'), 'again');
    });

    test('compare-and-set race: exactly one of 10 concurrent writers wins', async () => {
      const s = uniq('race');
      const creates = await Promise.all(
        Array.from({ length: 10 }, (_, i) => settle(S.set(s, 'k', { writer: i }, { expected_version: 0 }))),
      );
      const winners = creates.filter((r) => r.ok);
      assert.equal(winners.length, 1, `one create wins, got ${winners.length}`);
      for (const r of creates.filter((x) => !x.ok)) a.assertInvocationError(r.error, 'VERSION_CONFLICT');
      assert.deepEqual(await S.get(s, 'k'), winners[0].value.new_value);

      const v = winners[0].value.version;
      const updates = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          settle(S.update(s, 'k', [{ type: 'set', path: 'by', value: i }], { expected_version: v })),
        ),
      );
      assert.equal(updates.filter((r) => r.ok).length, 1, 'one conditional update wins');
      for (const r of updates.filter((x) => !x.ok)) a.assertInvocationError(r.error, 'VERSION_CONFLICT');
    });

    test('bad input: clear error codes, nothing half-written, connection usable', async () => {
      const s = uniq('bad');
      const base = { keep: 1 };
      await S.set(s, 'k', base);
      const scope257 = `${'é'.repeat(128)}a`; // 257 UTF-8 bytes, 129 characters
      const key1025 = `${'ü'.repeat(512)}a`; // 1025 UTF-8 bytes
      const D = 'deserialization_error';
      const cases = [
        ['set scope number', 'state::set', { scope: 5, key: 'k', value: 1 }, D],
        ['set scope missing', 'state::set', { key: 'k', value: 1 }, D],
        ['set key null', 'state::set', { scope: s, key: null, value: 1 }, D],
        ['set key array', 'state::set', { scope: s, key: ['k'], value: 1 }, D],
        ['set value and data', 'state::set', { scope: s, key: 'k', value: 1, data: 2 }, D],
        ['set payload string', 'state::set', 'not an object', D],
        ['list_groups payload null', 'state::list_groups', null, D],
        ['get key number', 'state::get', { scope: s, key: 7 }, D],
        ['delete scope object', 'state::delete', { scope: {}, key: 'k' }, D],
        ['list scope array', 'state::list', { scope: [] }, D],
        ['update ops string', 'state::update', { scope: s, key: 'k', ops: 'increment' }, D],
        ['update ops missing', 'state::update', { scope: s, key: 'k' }, D],
        ['update op object not array', 'state::update', { scope: s, key: 'k', ops: { type: 'remove' } }, D],
        ['update op without type', 'state::update', { scope: s, key: 'k', ops: [{ path: 'n', by: 1 }] }, D],
        ['update unknown op', 'state::update', { scope: s, key: 'k', ops: [{ type: 'multiply', path: 'n', by: 2 }] }, D],
        ['update by string', 'state::update', { scope: s, key: 'k', ops: [{ type: 'increment', path: 'n', by: '1' }] }, D],
        ['update by missing', 'state::update', { scope: s, key: 'k', ops: [{ type: 'increment', path: 'n' }] }, D],
        ['update by null', 'state::update', { scope: s, key: 'k', ops: [{ type: 'decrement', path: 'n', by: null }] }, D],
        ['update by boolean', 'state::update', { scope: s, key: 'k', ops: [{ type: 'decrement', path: 'n', by: true }] }, D],
        ['update set path number', 'state::update', { scope: s, key: 'k', ops: [{ type: 'set', path: 5, value: 1 }] }, D],
        ['update merge without value', 'state::update', { scope: s, key: 'k', ops: [{ type: 'merge', path: 'x' }] }, D],
        [
          'update good op then bad op',
          'state::update',
          { scope: s, key: 'k', ops: [{ type: 'set', path: 'keep', value: 2 }, { type: 'increment', path: 'n', by: 'x' }] },
          D,
        ],
        ['set empty scope', 'state::set', { scope: '', key: 'k', value: 1 }, 'INVALID_SCOPE'],
        ['set 257-byte scope', 'state::set', { scope: scope257, key: 'k', value: 1 }, 'INVALID_SCOPE'],
        ['update empty scope', 'state::update', { scope: '', key: 'k', ops: [] }, 'INVALID_SCOPE'],
        ['get empty scope', 'state::get', { scope: '', key: 'k' }, 'INVALID_SCOPE'],
        ['delete 257-byte scope', 'state::delete', { scope: scope257, key: 'k' }, 'INVALID_SCOPE'],
        ['list empty scope', 'state::list', { scope: '' }, 'INVALID_SCOPE'],
        ['set empty key', 'state::set', { scope: s, key: '', value: 1 }, 'INVALID_KEY'],
        ['set 1025-byte key', 'state::set', { scope: s, key: key1025, value: 1 }, 'INVALID_KEY'],
        ['update empty key', 'state::update', { scope: s, key: '', ops: [{ type: 'increment', by: 1 }] }, 'INVALID_KEY'],
        ['update 1025-byte key', 'state::update', { scope: s, key: key1025, ops: [] }, 'INVALID_KEY'],
        ['get empty key', 'state::get', { scope: s, key: '' }, 'INVALID_KEY'],
        ['delete empty key', 'state::delete', { scope: s, key: '' }, 'INVALID_KEY'],
      ];
      for (const [name, fid, payload, code] of cases) {
        const r = await settle(S.call(fid, payload));
        assert.equal(r.ok, false, `${name}: must fail with ${code}, got ${show(r.value)}`);
        try {
          a.assertInvocationError(r.error, code);
        } catch (err) {
          err.message = `${name}: ${err.message}`;
          throw err;
        }
        assert.deepEqual(await S.list(s), [base], `${name}: nothing written`);
      }
      const groups = await S.groups();
      assert.ok(!groups.includes('') && !groups.includes(scope257), 'invalid scopes never created');

      // Per-op failures from the table: the call succeeds, errors name the op, value unchanged.
      for (const [op, code] of [
        [{ type: 'merge', path: Array.from({ length: 33 }, () => 's'), value: { a: 1 } }, 'merge.path.too_deep'],
        [{ type: 'merge', path: ['__proto__', 'x'], value: { a: 1 } }, 'merge.path.proto_polluted'],
        [{ type: 'merge', value: nested(17) }, 'merge.value.too_deep'],
      ]) {
        const r = await S.update(s, 'k', [op]);
        assertOpErrors(r, [[0, code]], code);
        assert.deepEqual(await S.get(s, 'k'), base, `${code}: value unchanged`);
      }

      // The limits themselves are allowed: 256-byte scope, 1024-byte key (UTF-8 bytes, not characters).
      const scope256 = 'é'.repeat(128);
      const key1024 = 'ü'.repeat(512);
      assert.deepEqual(await S.set(scope256, key1024, 'edge'), { old_value: null, new_value: 'edge' });
      assert.equal(await S.get(scope256, key1024), 'edge');
      assert.ok((await S.groups()).includes(scope256));
      assert.equal(await S.del(scope256, key1024), 'edge');

      // The SDK connection is still healthy.
      assert.deepEqual(await S.get(s, 'k'), base);
    });

    test('a value over the default 16 MiB max_value_bytes is VALUE_TOO_LARGE; nothing written', async () => {
      const s = uniq('huge');
      await S.set(s, 'k', 'small');
      const huge = 'x'.repeat(16 * 1024 * 1024 + 64);
      await S.fails('state::set', { scope: s, key: 'k', value: huge }, 'VALUE_TOO_LARGE', { timeoutMs: 60000 });
      await S.fails('state::set', { scope: s, key: 'new', value: { blob: huge } }, 'VALUE_TOO_LARGE', { timeoutMs: 60000 });
      assert.equal(await S.get(s, 'k'), 'small');
      assert.deepEqual(await S.list(s), ['small']);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe(`state triggers with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let sub;
    let S;
    let drop = [];

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      sub = workers.connect(engine.workerUrl, { name: uniq('state-sub-') });
      const caller = workers.connect(engine.workerUrl, { name: uniq('state-writer-') });
      await ready(a, sub, raw);
      await ready(a, caller, raw);
      S = client(caller);
    });

    afterEach(() => {
      for (const t of drop) t.unregister();
      drop = [];
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('event payloads for set / update / delete, identical set fires updated (§11 21–22, §5.2–5.3)', async () => {
      const scope = uniq('todos');
      const w = await watch(sub, raw, { scope }, { drop });
      const steps = [
        [() => S.set(scope, 't1', { title: 'a' }), { event_type: 'state:created', key: 't1', old_value: null, new_value: { title: 'a' } }],
        [() => S.set(scope, 't1', { title: 'a' }), { event_type: 'state:updated', key: 't1', old_value: { title: 'a' }, new_value: { title: 'a' } }],
        [
          () => S.update(scope, 't1', [{ type: 'set', path: 'done', value: true }]),
          { event_type: 'state:updated', key: 't1', old_value: { title: 'a' }, new_value: { title: 'a', done: true } },
        ],
        [() => S.update(scope, 't2', [{ type: 'increment', path: 'n', by: 1 }]), { event_type: 'state:created', key: 't2', old_value: null, new_value: { n: 1 } }],
        [() => S.update(scope, 't2', [{ type: 'increment', path: 'n', by: 'x' }]).catch(() => null), null],
        [() => S.update(scope, 't2', [{ type: 'append', path: 'n', value: 1 }]), { event_type: 'state:updated', key: 't2', old_value: { n: 1 }, new_value: { n: 1 } }],
        [() => S.del(scope, 't1'), { event_type: 'state:deleted', key: 't1', old_value: { title: 'a', done: true }, new_value: null }],
        [() => S.set(scope, 't3', null), { event_type: 'state:created', key: 't3', old_value: null, new_value: null }],
        [() => S.set(scope, 't3', 0), { event_type: 'state:updated', key: 't3', old_value: null, new_value: 0 }],
      ];
      let expected = 0;
      for (const [write, want] of steps) {
        await write();
        if (!want) continue; // a rejected write fires nothing
        expected += 1;
        const ev = await waitFor(() => w.rec.calls[expected - 1], 5000, { message: `event ${want.event_type} for ${want.key}` });
        assert.deepEqual(ev, { type: 'state', scope, ...want }, 'exact payload: {type, event_type, scope, key, old_value, new_value}');
        assert.deepEqual(Object.keys(ev).sort(), ['event_type', 'key', 'new_value', 'old_value', 'scope', 'type']);
      }
      await sleep(300);
      assert.equal(w.rec.count, expected, `no extra events: ${show(w.rec.calls, 2000)}`);
    });

    test('delete of a missing key fires nothing (Trine; reference check 23 fired state:deleted)', async () => {
      const scope = uniq('ghosts');
      const w = await watch(sub, raw, { scope }, { drop });
      assertNone(await S.del(scope, 'ghost'));
      await S.set(scope, 'marker', 1);
      await waitFor(() => w.forKey('marker').length === 1, 5000, { message: 'marker event' });
      await sleep(300);
      assert.deepEqual(w.forKey('ghost'), [], 'no event for deleting a missing key');
      assert.equal(w.rec.count, 1);
    });

    test('key-filtered, scope-filtered and unfiltered triggers (§11 24, §5.1)', async () => {
      const scope = uniq('filt');
      const other = uniq('other');
      const byKey = await watch(sub, raw, { scope, key: 'k1' }, { drop });
      const byScope = await watch(sub, raw, { scope }, { drop });
      const byOther = await watch(sub, raw, { scope: other }, { drop });
      const all = await watch(sub, raw, {}, { drop });
      const unknownFields = await watch(sub, raw, { scope, key: 'k1', ignored_field: true }, { drop });

      await S.set(scope, 'k2', 2);
      await S.set(scope.toUpperCase(), 'k1', 'case');
      await S.set(scope, 'K1', 'case');
      await S.set(other, 'k9', 9);
      await S.set(scope, 'k1', 1);

      await waitFor(() => byKey.rec.count >= 1 && byScope.rec.count >= 3 && byOther.rec.count >= 1 && unknownFields.rec.count >= 1, 5000, {
        message: 'filtered triggers fired',
      });
      const mine = () => all.rec.calls.filter((e) => [scope, other, scope.toUpperCase()].includes(e.scope));
      await waitFor(() => mine().length >= 5, 5000, { message: 'unfiltered trigger saw every write' });
      await sleep(300);
      assert.deepEqual(byKey.rec.calls.map((e) => [e.scope, e.key]), [[scope, 'k1']], 'key filter: exact and case-sensitive');
      assert.deepEqual(unknownFields.rec.calls.map((e) => e.key), ['k1'], 'unknown config fields are ignored');
      assert.deepEqual(byScope.rec.calls.map((e) => e.key).sort(), ['K1', 'k1', 'k2'], 'scope filter: exact and case-sensitive');
      assert.deepEqual(byOther.rec.calls.map((e) => e.key), ['k9']);
      assert.equal(mine().length, 5, `unfiltered: ${show(mine(), 1000)}`);
    });

    test('user function state::onUserUpdated bound to {scope:"users", key:"profile"} (§11 34, T3)', async () => {
      const rec = new Recorder();
      a.fn(sub, 'state::onUserUpdated', async (payload) => {
        rec.push(payload);
        return null;
      });
      drop.push(sub.registerTrigger({ type: 'state', function_id: 'state::onUserUpdated', config: { scope: 'users', key: 'profile' } }));
      await ready(a, sub, raw);
      await waitForStateTrigger(raw, 'state::onUserUpdated');
      // Calling it directly works too: the state:: prefix is not reserved.
      assertNone(await S.call('state::onUserUpdated', { direct: true }));
      rec.calls.length = 0;

      await S.set('users', 'settings', { theme: 'dark' });
      await S.set('accounts', 'profile', { name: 'not a user' });
      await S.set('users', 'profile', { name: 'Ada' });
      await waitFor(() => rec.count >= 1, 5000, { message: 'state::onUserUpdated called' });
      await sleep(300);
      assert.deepEqual(rec.calls, [
        { type: 'state', event_type: 'state:created', scope: 'users', key: 'profile', old_value: null, new_value: { name: 'Ada' } },
      ]);
    });

    test('conditions: only literal false skips; the condition gets the event payload (§11 25)', async () => {
      const scope = uniq('cond');
      const conds = {};
      const handlers = {};
      for (const [name, ret] of [['false', false], ['null', null], ['zero', 0], ['true', true], ['empty', ''], ['object', {}]]) {
        const condId = `${uniq(`cond-${name}`)}::check`;
        const seen = new Recorder();
        a.fn(sub, condId, async (payload) => {
          seen.push(payload);
          return ret;
        });
        conds[name] = seen;
        handlers[name] = await watch(sub, raw, { scope, condition_function_id: condId }, { drop });
      }
      await S.set(scope, 'k', { v: 1 });
      const want = { type: 'state', event_type: 'state:created', scope, key: 'k', old_value: null, new_value: { v: 1 } };
      for (const name of ['null', 'zero', 'true', 'empty', 'object']) {
        const ev = await waitFor(() => handlers[name].rec.calls[0], 5000, { message: `handler behind condition returning ${name}` });
        assert.deepEqual(ev, want);
      }
      const condInput = await waitFor(() => conds.false.calls[0], 5000, { message: 'false condition evaluated' });
      assert.deepEqual(condInput, want, 'condition input is the event payload');
      await sleep(300);
      assert.equal(handlers.false.rec.count, 0, 'condition false skips the handler');
      for (const name of Object.keys(conds)) assert.equal(conds[name].count, 1, `condition ${name} evaluated once`);
    });

    test('trigger metadata goes to the handler as the sidecar, never into the payload (§5.1, T3)', async () => {
      const scope = uniq('meta');
      const fnId = `${uniq('meta')}::on-state`;
      const seen = new Recorder();
      a.fn(sub, fnId, async (payload, metadata) => {
        seen.push({ payload, metadata });
        return null;
      });
      drop.push(sub.registerTrigger({ type: 'state', function_id: fnId, config: { scope }, metadata: { tenant: 'acme' } }));
      await ready(a, sub, raw);
      await waitForStateTrigger(raw, fnId);
      await S.set(scope, 'k', 1);
      const got = await waitFor(() => seen.calls[0], 5000, { message: 'handler called' });
      assert.deepEqual(got.payload, { type: 'state', event_type: 'state:created', scope, key: 'k', old_value: null, new_value: 1 });
      if (a.hasMetadataArg) assert.deepEqual(got.metadata, { tenant: 'acme' });
    });

    test('handlers may write state, also to the key that fired them (seed metrics pattern, §5.4.7)', async () => {
      const scope = uniq('todos');
      const metrics = uniq('metrics');
      const writer = client(sub);
      const onTodo = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async (p) => {
          const by = p.event_type === 'state:deleted' ? -1 : p.event_type === 'state:created' ? 1 : 0;
          await writer.update(metrics, 'global', [
            { type: 'increment', path: 'total', by },
            { type: 'increment', path: 'events', by: 1 },
          ]);
          // Writing the key that fired this event: ordered delivery must not wait on itself.
          if (p.key === 'self' && p.new_value !== null && p.new_value.n < 3) {
            await writer.update(scope, 'self', [{ type: 'increment', path: 'n', by: 1 }]);
          }
          return null;
        },
      });
      const onMetrics = await watch(sub, raw, { scope: metrics }, { drop });
      await S.set(scope, 'a', { title: 'a' });
      await S.set(scope, 'b', { title: 'b' });
      await S.del(scope, 'a');
      await S.set(scope, 'self', { n: 0 });
      await waitFor(async () => (await S.get(scope, 'self'))?.n === 3, 5000, { message: 'self-writes reached n = 3' });
      await waitFor(() => onTodo.rec.count >= 7 && onMetrics.rec.count >= 7, 5000, { message: 'all events handled' });
      assert.deepEqual(onTodo.forKey('self').map((e) => e.new_value), [0, 1, 2, 3].map((n) => ({ n })));
      assert.deepEqual(await S.get(metrics, 'global'), { total: 2, events: 7 }, 'created a, b, self (+3), deleted a (-1), updates (+0)');
      const m = dropConsecutiveDuplicates(onMetrics.forKey('global'));
      assertChain(m, 'metrics');
      assert.equal(m.length, 7, 'one metrics write per todo event');
      assert.deepEqual(m.at(-1).new_value, { total: 2, events: 7 });
    });

    test('a throwing handler does not change the write result (§11 26)', async () => {
      const scope = uniq('throws');
      const w = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async () => {
          throw new Error('handler exploded');
        },
      });
      assert.deepEqual(await S.set(scope, 'k', 1), { old_value: null, new_value: 1 });
      await waitFor(() => w.rec.count >= 1, 5000, { message: 'throwing handler called' });
      assert.deepEqual(await S.set(scope, 'k', 2), { old_value: 1, new_value: 2 });
      assert.equal(await S.get(scope, 'k'), 2);
    });

    test('the caller gets its result before a 2 s handler finishes (§11 27)', async () => {
      const scope = uniq('slow');
      const finished = new Recorder();
      const w = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async (p) => {
          await sleep(2000);
          finished.push(p);
          return null;
        },
      });
      const r = await settle(S.set(scope, 'k', 'v'));
      assert.ok(r.ok);
      assert.deepEqual(r.value, { old_value: null, new_value: 'v' });
      assert.ok(r.ms < 1500, `state::set waited ${r.ms} ms for a 2 s handler`);
      assert.equal(finished.count, 0, 'handler still running when the write returned');
      const r2 = await settle(S.update(scope, 'k2', [{ type: 'increment', by: 1 }]));
      assert.ok(r2.ok && r2.ms < 1500, `second write took ${r2.ms} ms`);
      await waitFor(() => w.rec.count >= 1, 3000, { message: 'slow handler started' });
      await waitFor(() => finished.count >= 2, 8000, { message: 'slow handler finished both events' });
    });

    test('state trigger with config null or a bad config fails registration (§11 28)', async () => {
      const binder = await RawClient.connect(engine.workerUrl);
      try {
        const fnId = `${uniq('badcfg')}::fn`;
        await binder.register(fnId, async () => null);
        for (const config of [null, { scope: 5 }, 'scope']) {
          const id = randomUUID();
          const since = binder.mark();
          await binder.send({ type: 'registertrigger', id, trigger_type: 'state', function_id: fnId, config });
          const report = await binder.next((m) => m.type === 'triggerregistrationresult' && m.id === id, {
            since,
            timeoutMs: 3000,
            what: `triggerregistrationresult for config ${show(config)}`,
          });
          assert.equal(report.error?.code, 'trigger_registration_failed', `config ${show(config)}: ${show(report)}`);
          assert.equal(typeof report.error?.message, 'string');
        }
        await binder.ping();
        const listed = (await listTriggers(raw, true)).filter((t) => t.function_id === fnId);
        assert.deepEqual(listed, [], 'failed registrations are not listed');
      } finally {
        await binder.close();
      }
    });

    test('worker disconnect removes its state triggers; writes meanwhile are not replayed (§11 29)', async () => {
      const scope = uniq('gone');
      const fnId = `${uniq('gone')}::on-state`;
      const temp = workers.connect(engine.workerUrl, { name: uniq('temp-sub-') });
      const w1 = await watch(temp, raw, { scope }, { fnId });
      await S.set(scope, 'before', 1);
      await waitFor(() => w1.rec.count === 1, 5000, { message: 'first worker got the event' });
      await workers.shutdown(temp);
      await waitFor(async () => !(await listTriggers(raw, true)).some((t) => t.function_id === fnId), 5000, {
        message: 'trigger removed with its worker',
      });
      await S.set(scope, 'during', 2);
      await S.del(scope, 'before');

      const temp2 = workers.connect(engine.workerUrl, { name: uniq('temp-sub2-') });
      const w2 = await watch(temp2, raw, { scope }, { fnId });
      await S.set(scope, 'after', 3);
      await waitFor(() => w2.forKey('after').length === 1, 5000, { message: 'new worker got the new event' });
      await sleep(300);
      assert.deepEqual(w2.rec.calls.map((e) => e.key), ['after'], 'nothing from the gap was delivered');
      assert.equal(w1.rec.count, 1);
      await workers.shutdown(temp2);
    });

    test('per-key order under a burst of 100 concurrent increments (Trine delivery guarantee)', async () => {
      const scope = uniq('burst');
      const w = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async () => {
          await sleep(Math.random() * 4); // uneven handler latency: reordering would show
          return null;
        },
      });
      const calls = [];
      for (let i = 0; i < 100; i++) calls.push(S.update(scope, 'counter', [{ type: 'increment', path: 'n', by: 1 }]));
      for (let i = 0; i < 25; i++) calls.push(S.update(scope, 'side', [{ type: 'increment', by: 1 }]));
      const results = await Promise.all(calls);
      const main = results.slice(0, 100);
      const olds = main.map((r) => r.old_value?.n ?? 0).sort((x, y) => x - y);
      assert.deepEqual(olds, Array.from({ length: 100 }, (_, i) => i), 'every increment saw a distinct old value (atomic)');
      for (const r of main) {
        assert.ok(!('errors' in r));
        assert.deepEqual(r.new_value, { n: (r.old_value?.n ?? 0) + 1 });
      }
      assert.deepEqual(await S.get(scope, 'counter'), { n: 100 });
      assert.equal(await S.get(scope, 'side'), 25);

      await waitFor(() => w.forKey('counter').length >= 100 && w.forKey('side').length >= 25, 30000, {
        message: 'all 125 events delivered',
      });
      const counter = dropConsecutiveDuplicates(w.forKey('counter'));
      assert.equal(counter.length, 100, 'one event per write');
      assert.equal(counter[0].event_type, 'state:created');
      assert.equal(counter[0].old_value, null);
      assert.ok(counter.slice(1).every((e) => e.event_type === 'state:updated'));
      assertChain(counter, 'counter');
      assert.deepEqual(counter.at(-1).new_value, { n: 100 });
      const side = dropConsecutiveDuplicates(w.forKey('side'));
      assert.equal(side.length, 25);
      assertChain(side, 'side');
      assert.equal(side.at(-1).new_value, 25);
    });

    test('a trigger that always throws never delays another trigger on the same scope', async () => {
      // Default retry policy (100 ms doubling, 8 attempts ≈ 12.7 s per event): if the failing
      // trigger blocked the healthy one, the healthy one would need minutes for these events.
      const scope = uniq('mixed');
      const attemptsAt = new Map(); // event new_value → attempt timestamps
      const bad = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async (p) => {
          const tag = JSON.stringify(p.new_value);
          if (!attemptsAt.has(tag)) attemptsAt.set(tag, []);
          attemptsAt.get(tag).push(Date.now());
          throw new Error('always fails');
        },
      });
      const good = await watch(sub, raw, { scope }, { drop });
      const started = Date.now();
      for (let i = 1; i <= 5; i++) await S.set(scope, 'k', { i });
      await S.set(scope, 'k2', 'x');
      await waitFor(() => good.rec.count >= 6, 5000, { message: 'healthy trigger got all six events promptly' });
      const elapsed = Date.now() - started;
      const events = good.forKey('k');
      assert.deepEqual(events.map((e) => e.new_value), [1, 2, 3, 4, 5].map((i) => ({ i })), 'in order');
      assertChain(events, 'healthy trigger');
      assert.ok(bad.rec.count >= 1, 'the failing handler was attempted');
      assert.ok(elapsed < 5000, `healthy deliveries took ${elapsed} ms`);

      // Retries back off exponentially from --trigger-retry-ms (100 ms): gaps ≥ 100, ≥ 200 (lower
      // bounds only, with a little timer slack; a loaded machine only makes them longer).
      const first = await waitFor(() => {
        const at = attemptsAt.get(JSON.stringify({ i: 1 }));
        return at && at.length >= 3 && at;
      }, 5000, { message: 'three attempts of the first event' });
      const gaps = [first[1] - first[0], first[2] - first[1]];
      assert.ok(gaps[0] >= 90 && gaps[1] >= 180, `retry gaps ${gaps.join(', ')} ms must grow from 100 ms, doubling`);
      // In order per (trigger, key): while event 1 is still being retried, event 2 of the same key
      // is not delivered to the failing trigger.
      assert.deepEqual(
        [...new Set(bad.forKey('k').map((e) => JSON.stringify(e.new_value)))],
        [JSON.stringify({ i: 1 })],
        'the failing trigger saw only the first event of k so far',
      );
    });
  });

  // -------------------------------------------------------------------------------------------
  describe(`state retries and dead letters with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let sub;
    let S;
    let drop = [];

    before(async () => {
      engine = await startEngine({ extraArgs: ['--trigger-max-attempts', '3', '--trigger-retry-ms', '20'] });
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      sub = workers.connect(engine.workerUrl, { name: uniq('dl-sub-') });
      const caller = workers.connect(engine.workerUrl, { name: uniq('dl-writer-') });
      await ready(a, sub, raw);
      await ready(a, caller, raw);
      S = client(caller);
    });

    afterEach(() => {
      for (const t of drop) t.unregister();
      drop = [];
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('an always-throwing trigger is dead-lettered after 3 attempts; the other trigger gets every event in order', async () => {
      const scope = uniq('dl');
      const started = Date.now();
      const bad = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async (p) => {
          throw new Error(`always fails: ${p.key}`);
        },
      });
      const good = await watch(sub, raw, { scope }, { drop });
      await S.set(scope, 'k', { v: 1 });
      await S.set(scope, 'k', { v: 2 });
      await S.update(scope, 'k', [{ type: 'increment', path: 'v', by: 1 }]);
      await S.del(scope, 'k');
      await S.set(scope, 'k2', 'other');

      await waitFor(() => good.rec.count >= 5, 5000, { message: 'healthy trigger got all five events' });
      const kEvents = good.forKey('k');
      assert.deepEqual(kEvents.map((e) => e.event_type), ['state:created', 'state:updated', 'state:updated', 'state:deleted']);
      assertChain(kEvents, 'healthy trigger');

      const dls = await waitFor(
        async () => {
          const list = await S.deadLetters({ function_id: bad.id });
          return list.length >= 5 && list;
        },
        20000,
        { message: 'five dead letters for the failing trigger' },
      );
      assert.equal(dls.length, 5, show(dls, 3000));
      const now = Date.now();
      for (const dl of dls) {
        assert.ok(['string', 'number'].includes(typeof dl.id), `dead letter id ${show(dl.id)}`);
        assert.ok(Number.isInteger(dl.seq), `seq ${show(dl.seq)}`);
        assert.equal(dl.trigger_id, bad.triggerId);
        assert.equal(dl.function_id, bad.id);
        assert.equal(dl.attempts, 3);
        assert.equal(dl.error?.code, 'invocation_failed', show(dl.error));
        assert.equal(dl.error?.message, `always fails: ${dl.event.key}`, 'the handler\'s real error');
        assert.ok(Number.isInteger(dl.failed_at_ms) && dl.failed_at_ms >= started - 1000 && dl.failed_at_ms <= now + 1000, `failed_at_ms ${dl.failed_at_ms}`);
        assert.deepEqual(Object.keys(dl.event).sort(), ['event_type', 'key', 'new_value', 'old_value', 'scope', 'type']);
        assert.ok(good.rec.calls.some((e) => isDeepStrictEqual(e, dl.event)), `dead-lettered event is a real event: ${show(dl.event)}`);
      }
      assert.equal(new Set(dls.map((d) => d.id)).size, 5, 'ids are unique');
      const kDead = dls.filter((d) => d.event.key === 'k').sort((x, y) => x.seq - y.seq).map((d) => d.event);
      assert.deepEqual(kDead, kEvents, 'dead letters of one key keep the event order');

      await sleep(300);
      assert.equal(bad.rec.count, 15, 'exactly 3 attempts per event, no more after dead-lettering');
      // Per (trigger, key) order holds through retries: all attempts of one event come before the next.
      const tag = (e) => `${e.event_type} ${JSON.stringify(e.new_value)}`;
      assert.deepEqual(
        bad.forKey('k').map(tag),
        kEvents.flatMap((e) => [tag(e), tag(e), tag(e)]),
        'attempts of key k: each event three times, in event order',
      );

      // Filters and limit.
      assert.equal((await S.deadLetters({ trigger_id: bad.triggerId })).length, 5);
      assert.deepEqual(await S.deadLetters({ function_id: good.id }), []);
      assert.deepEqual(await S.deadLetters({ trigger_id: good.triggerId }), []);
      assert.equal((await S.deadLetters({ function_id: bad.id, limit: 2 })).length, 2);

      // Discard one, then all.
      assert.equal((await S.discard({ id: dls[0].id })).removed, true);
      assert.equal((await S.discard({ id: dls[0].id })).removed, false, 'discarding twice removes nothing');
      const rest = await S.deadLetters({ function_id: bad.id });
      assert.equal(rest.length, 4);
      assert.ok(!rest.some((d) => d.id === dls[0].id));
      await S.discard({ all: true });
      assert.deepEqual(await S.deadLetters({}), []);
    });

    test('a handler that fails once per event is retried; deliveries stay in order; nothing dead-lettered', async () => {
      const scope = uniq('flaky');
      const tried = new Set();
      const delivered = new Recorder();
      const w = await watch(sub, raw, { scope }, {
        drop,
        onEvent: async (p) => {
          const tag = JSON.stringify(p);
          if (!tried.has(tag)) {
            tried.add(tag);
            throw new Error('first attempt fails');
          }
          delivered.push(p);
          return null;
        },
      });
      const writes = [];
      for (let i = 0; i < 6; i++) writes.push(S.update(scope, 'k', [{ type: 'increment', path: 'n', by: 1 }]));
      await Promise.all(writes);
      await waitFor(() => delivered.count >= 6, 10000, { message: 'six events delivered after one retry each' });
      const events = dropConsecutiveDuplicates(delivered.calls);
      assert.deepEqual(events.map((e) => e.new_value), [1, 2, 3, 4, 5, 6].map((n) => ({ n })));
      assertChain(events, 'retried deliveries');
      assert.ok(w.rec.count >= 12, `each event attempted twice, got ${w.rec.count} attempts`);
      assert.deepEqual(await S.deadLetters({ function_id: w.id }), []);
    });

    test('a condition that throws: handler never runs; dead-lettered with the condition error (§11 25)', async () => {
      const scope = uniq('condfail');
      const condId = `${uniq('cond-throws')}::check`;
      const condCalls = new Recorder();
      a.fn(sub, condId, async (p) => {
        condCalls.push(p);
        throw new Error('condition exploded');
      });
      const w = await watch(sub, raw, { scope, condition_function_id: condId }, { drop });
      await S.set(scope, 'k', 1);
      const dls = await waitFor(
        async () => {
          const list = await S.deadLetters({ trigger_id: w.triggerId });
          return list.length >= 1 && list;
        },
        10000,
        { message: 'condition failure dead-lettered' },
      );
      assert.equal(dls.length, 1);
      assert.equal(dls[0].error?.code, 'invocation_failed');
      assert.equal(dls[0].error?.message, 'condition exploded');
      assert.equal(dls[0].attempts, 3);
      assert.deepEqual(dls[0].event, { type: 'state', event_type: 'state:created', scope, key: 'k', old_value: null, new_value: 1 });
      assert.equal(condCalls.count, 3, 'a throwing condition counts as a failed attempt');
      assert.equal(w.rec.count, 0, 'handler never called');
      await S.discard({ id: dls[0].id });
    });
  });

  // -------------------------------------------------------------------------------------------
  describe(`state value size limit with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let sub;
    let S;

    before(async () => {
      engine = await startEngine({ extraArgs: ['--state-max-value-bytes', '10'] });
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      sub = workers.connect(engine.workerUrl, { name: uniq('size-sub-') });
      const caller = workers.connect(engine.workerUrl, { name: uniq('size-writer-') });
      await ready(a, sub, raw);
      await ready(a, caller, raw);
      S = client(caller);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('set and update results over --state-max-value-bytes fail VALUE_TOO_LARGE; nothing written, no event (§11 20)', async () => {
      const scope = uniq('sz');
      const w = await watch(sub, raw, { scope });
      assert.deepEqual(await S.set(scope, 'k', '12345678'), { old_value: null, new_value: '12345678' }, '10 bytes is allowed');
      await S.fails('state::set', { scope, key: 'k', value: '123456789' }, 'VALUE_TOO_LARGE');
      await S.fails('state::set', { scope, key: 'k', value: { twenty: 'bytes!!' } }, 'VALUE_TOO_LARGE');
      assert.equal(await S.get(scope, 'k'), '12345678');

      await S.set(scope, 'n', { n: 1 });
      await S.fails('state::update', { scope, key: 'n', ops: [{ type: 'set', path: 'long', value: 'xxxxxxxxxx' }] }, 'VALUE_TOO_LARGE');
      assert.deepEqual(await S.get(scope, 'n'), { n: 1 }, 'oversized update result not written');
      assert.deepEqual((await S.update(scope, 'n', [{ type: 'increment', path: 'n', by: 1 }])).new_value, { n: 2 });

      await S.fails('state::update', { scope, key: 'fresh', ops: [{ type: 'set', value: 'way too long' }] }, 'VALUE_TOO_LARGE');
      assertNone(await S.get(scope, 'fresh'), 'key not created');
      assert.deepEqual(await S.list(scope), ['12345678', { n: 2 }]);

      await S.set(scope, 'marker', 1);
      await waitFor(() => w.forKey('marker').length === 1, 5000, { message: 'marker event' });
      await sleep(300);
      assert.deepEqual(
        w.rec.calls.map((e) => [e.key, e.event_type]),
        [['k', 'state:created'], ['n', 'state:created'], ['n', 'state:updated'], ['marker', 'state:created']],
        'rejected writes fired nothing',
      );
    });
  });

  // -------------------------------------------------------------------------------------------
  describe(`state persistence with iii-sdk ${a.gen}`, () => {
    const engines = [];
    let workers;

    before(() => {
      workers = new Workers(a);
    });

    after(async () => {
      await workers?.shutdownAll();
      for (const e of engines) await e.dispose();
    });

    async function attach(engine) {
      const raw = await RawClient.connect(engine.workerUrl);
      const w = workers.connect(engine.workerUrl, { name: uniq('persist-') });
      await ready(a, w, raw);
      return { raw, w, S: client(w) };
    }

    async function detach({ raw, w }) {
      // The engine may already be dead (SIGKILL): never let a shutdown hang the suite.
      await withTimeout(workers.shutdown(w), 5000, 'SDK shutdown').catch(() => {});
      await withTimeout(raw.close(), 2000, 'raw close').catch(() => raw.terminate());
    }

    test('SIGKILL right after acknowledged writes: restart on the same data dir keeps everything (§11 30)', async () => {
      const engine = await startEngine();
      engines.push(engine);
      let c = await attach(engine);
      const s = uniq('keep');
      const bulk = uniq('bulk');
      await c.S.set(s, 'c', { id: 'c' });
      await c.S.set(s, 'a', 'A');
      await c.S.set(s, 'b', [1, 2]);
      await c.S.set(s, 'a', 'A2');
      await Promise.all([1, 2, 3].map(() => c.S.update(s, 'cnt', [{ type: 'increment', path: 'n', by: 5 }])));
      await c.S.set(s, 'gone', 1);
      await c.S.del(s, 'gone');
      const emptied = uniq('emptied');
      await c.S.set(emptied, 'x', 1);
      await c.S.del(emptied, 'x');
      // Names that are awkward for a file-based store: path syntax, NUL, long UTF-8.
      const oddScopes = ['.', '..', 'a/b', '%2F', ' ', '\u0000nul', 'é'.repeat(128), 'x'.repeat(256)];
      const oddKeys = ['.', '..', 'k/1', '\u0000', 'ü'.repeat(512)];
      for (const os of oddScopes) for (const ok of oddKeys) await c.S.set(os, ok, { os, ok });
      const cas = await c.S.set(s, 'cas', 'v', { expected_version: 0 });
      await Promise.all(Array.from({ length: 50 }, (_, i) => c.S.set(bulk, `k${i}`, { i })));
      const last = await c.S.set(s, 'last', 'written just before the kill');
      assert.deepEqual(last, { old_value: null, new_value: 'written just before the kill' });

      engine.proc.kill('SIGKILL');
      const exit = await engine.exited;
      assert.equal(exit.signal, 'SIGKILL');
      await detach(c);
      assert.ok(existsSync(path.join(engine.dataDir, 'state')), 'state lives under <data-dir>/state');

      await engine.start();
      c = await attach(engine);
      assert.deepEqual(await c.S.list(s), [{ id: 'c' }, 'A2', [1, 2], { n: 15 }, 'v', 'written just before the kill'], 'values and order survive');
      assertNone(await c.S.get(s, 'gone'), 'deleted key stays deleted');
      assert.equal(await c.S.get(s, 'last'), 'written just before the kill');
      const bulkValues = await c.S.list(bulk);
      assert.equal(bulkValues.length, 50);
      assert.deepEqual(bulkValues.map((v) => v.i).sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
      const groups = await c.S.groups();
      assert.ok(groups.includes(s) && groups.includes(bulk), `groups after restart ${show(groups)}`);
      assert.ok(!groups.includes(emptied), 'a scope emptied before the kill stays gone (T2)');
      for (const os of oddScopes) {
        assert.ok(groups.includes(os), `scope ${show(os, 40)} listed after restart`);
        assert.deepEqual(await c.S.list(os), oddKeys.map((ok) => ({ os, ok })), `scope ${show(os, 40)} intact after restart`);
      }
      assert.deepEqual(await c.S.get(s, 'cas', { with_meta: true }), { value: 'v', version: cas.version }, 'versions survive');
      const next = await c.S.set(s, 'cas', 'v2', { expected_version: cas.version });
      assert.ok(next.version > cas.version);
      await detach(c);
    });

    test('SIGTERM restart keeps data; --state-store in_memory keeps nothing', async () => {
      const durable = await startEngine();
      engines.push(durable);
      let c = await attach(durable);
      const s = uniq('term');
      await c.S.set(s, 'k', { ok: true });
      await c.S.update(s, 'k', [{ type: 'set', path: 'more', value: 1 }]);
      await detach(c);
      await durable.restart();
      c = await attach(durable);
      assert.deepEqual(await c.S.get(s, 'k'), { ok: true, more: 1 });
      await detach(c);

      const volatile = await startEngine({ extraArgs: ['--state-store', 'in_memory'] });
      engines.push(volatile);
      c = await attach(volatile);
      const v = uniq('mem');
      await c.S.set(v, 'k', 1);
      assert.equal(await c.S.get(v, 'k'), 1);
      await detach(c);
      await volatile.restart();
      c = await attach(volatile);
      assertNone(await c.S.get(v, 'k'), 'in_memory: nothing survives a restart');
      assert.ok(!(await c.S.groups()).includes(v));
      await detach(c);
    });
  });
}
