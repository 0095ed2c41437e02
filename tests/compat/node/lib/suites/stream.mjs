// The STREAM module through the SDK under test, observed by plain WebSocket clients of the stream
// port: the `stream::*` functions, the envelopes pushed on both URL forms (`/` with join/leave,
// `/stream/{stream}/{group}[/{item}]`), Trine's `seq`/`epoch` and resume, the `stream`,
// `stream:join` and `stream:leave` trigger types, worker-provided stream implementations
// (`createStream`) and bad client input (shared/spec/stream.md §2–§5, R1–R3, §10 checks 1–13,
// 16–27; docs/streams.md for Trine's additions).
//
// One engine for the whole file; every test works on stream names of its own, and join/leave
// triggers are always registered with a `stream_name` filter so that tests do not see each other.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  RawClient,
  httpRequest,
  isUuid,
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

const STREAM_FUNCTIONS = [
  'stream::set',
  'stream::get',
  'stream::delete',
  'stream::list',
  'stream::list_groups',
  'stream::list_all',
  'stream::send',
  'stream::update',
];
// Waits are generous: the suites run on a loaded 2-core machine.
const T = 10000;

const show = (v, n = 400) => {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > n ? `${s.slice(0, n)}…` : s;
};

/** A null result: the engine omits `result` when it is null, so Node SDKs resolve `undefined`. */
function assertNone(value, message = 'expected no value (null)') {
  assert.ok(value === null || value === undefined, `${message}: got ${show(value)}`);
}

/** The envelope as `stream` triggers see it: without Trine's `seq` / `epoch`. */
function strip(envelope) {
  const { seq: _seq, epoch: _epoch, ...rest } = envelope;
  return rest;
}

const isEnvelope = (m) => m?.type === 'stream';
const isSync = (m) => isEnvelope(m) && m.event?.type === 'sync';
const isEvent = (m) => isEnvelope(m) && m.event?.type !== 'sync' && m.event?.type !== 'unauthorized';
/** A custom event (stream::send) named `name`. */
const named = (name) => (m) => isEnvelope(m) && m.event?.type === 'event' && m.event?.event?.type === name;

/** Shape of every envelope (§3): type, integer ms timestamp, names, id, tagged event. */
function assertEnvelope(m, { stream, group, id = null, event }, label = 'envelope') {
  assert.equal(m.type, 'stream', `${label}: type`);
  assert.ok(Number.isInteger(m.timestamp), `${label}: integer timestamp, got ${show(m.timestamp)}`);
  assert.ok(Math.abs(m.timestamp - Date.now()) < 120000, `${label}: timestamp ${m.timestamp} is Unix ms`);
  assert.equal(m.streamName, stream, `${label}: streamName`);
  assert.equal(m.groupId, group, `${label}: groupId`);
  assert.ok('id' in m, `${label}: id always present`);
  assert.equal(m.id, id, `${label}: id`);
  if (event !== undefined) assert.deepEqual(m.event, event, `${label}: event`);
}

/** `seq` +1 per envelope and one `epoch` (all envelopes of one group). */
function assertConsecutive(envs, label, firstSeq) {
  assert.ok(envs.length > 0, `${label}: no envelopes`);
  const epoch = envs[0].epoch;
  assert.equal(typeof epoch, 'string', `${label}: epoch is a string, got ${show(epoch)}`);
  assert.ok(epoch.length > 0, `${label}: epoch non-empty`);
  if (firstSeq !== undefined) assert.equal(envs[0].seq, firstSeq, `${label}: first seq`);
  for (let i = 0; i < envs.length; i++) {
    assert.ok(Number.isInteger(envs[i].seq), `${label}: seq of #${i} is an integer: ${show(envs[i])}`);
    assert.equal(envs[i].epoch, epoch, `${label}: epoch of #${i}`);
    if (i > 0) assert.equal(envs[i].seq, envs[i - 1].seq + 1, `${label}: seq of #${i}: ${show(envs.map((e) => e.seq))}`);
  }
}

const byJson = (x, y) => (JSON.stringify(x) < JSON.stringify(y) ? -1 : 1);

/**
 * @param a the SDK adapter of the project (its adapter.mjs)
 * @param createStream `(iii, streamName, impl)` as the installed SDK exposes it
 */
export function streamSuite(a, { createStream }) {
  describe(`stream module with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let caller;
    let sub;
    let S;
    const sockets = [];

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      caller = workers.connect(engine.workerUrl, { name: uniq('stream-caller-') });
      sub = workers.connect(engine.workerUrl, { name: uniq('stream-sub-') });
      await ready(a, caller, raw);
      await ready(a, sub, raw);
      S = client(caller);
    });

    after(async () => {
      for (const c of sockets) c.terminate();
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    /** Stream calls through the SDK's trigger(). */
    function client(iii) {
      const call = (functionId, payload, extra = {}) => iii.trigger({ function_id: functionId, payload, ...extra });
      return {
        call,
        set: (stream_name, group_id, item_id, data) => call('stream::set', { stream_name, group_id, item_id, data }),
        get: (stream_name, group_id, item_id) => call('stream::get', { stream_name, group_id, item_id }),
        del: (stream_name, group_id, item_id) => call('stream::delete', { stream_name, group_id, item_id }),
        update: (stream_name, group_id, item_id, ops) => call('stream::update', { stream_name, group_id, item_id, ops }),
        list: (stream_name, group_id) => call('stream::list', { stream_name, group_id }),
        groups: (stream_name) => call('stream::list_groups', { stream_name }),
        all: () => call('stream::list_all', {}),
        send: (stream_name, group_id, fields) => call('stream::send', { stream_name, group_id, ...fields }),
        async fails(functionId, payload, code) {
          const r = await settle(call(functionId, payload));
          assert.equal(r.ok, false, `${functionId} ${show(payload, 200)} must fail with ${code}, got ${show(r.value, 200)}`);
          a.assertInvocationError(r.error, code);
          return r.error;
        },
      };
    }

    const streamBase = () => engine.streamUrl.replace(/\/+$/, '');

    /** A plain WebSocket client of the stream port. */
    async function sock(pathAndQuery) {
      const c = await RawClient.connect(`${streamBase()}${pathAndQuery}`, { timeoutMs: T });
      sockets.push(c);
      return c;
    }

    const groupPath = (stream, group, item) =>
      `/stream/${encodeURIComponent(stream)}/${encodeURIComponent(group)}${item === undefined ? '' : `/${encodeURIComponent(item)}`}`;

    /** Joins on a `/` socket and waits for the join's answer (sync or unauthorized). */
    async function join(c, data) {
      const since = c.mark();
      await c.send({ type: 'join', data });
      return c.next(
        (m) =>
          isEnvelope(m) &&
          (m.event?.type === 'sync' || m.event?.type === 'unauthorized') &&
          m.streamName === data.streamName &&
          m.groupId === data.groupId,
        { since, timeoutMs: T, what: `answer to join ${show(data)}` },
      );
    }

    const envelopes = (c, since = 0) => c.messages(since).filter(isEnvelope);

    /**
     * Sends a marker event on the group and waits until `c` got it; returns the envelopes `c`
     * received from `since` up to (not including) the marker: proves what did NOT arrive. The
     * list may hold markers of earlier calls (every subscriber of the group gets them; see
     * noMarkers); the marker itself is `.marker` of the result.
     */
    async function untilMarker(c, stream, group, since = 0, id) {
      const name = uniq('marker-');
      await S.send(stream, group, { type: name, data: null, ...(id ? { id } : {}) });
      const marker = await c.next(named(name), { since, timeoutMs: T, what: `marker ${name}` });
      const all = envelopes(c, since);
      const out = all.slice(0, all.indexOf(marker));
      Object.defineProperty(out, 'marker', { value: marker, enumerable: false });
      return out;
    }

    const isMarker = (m) => m.event?.type === 'event' && String(m.event?.event?.type).startsWith('marker-');
    const noMarkers = (list) => list.filter((m) => !isMarker(m));

    async function waitTrigger(functionId, type) {
      return waitFor(
        async () => (await listTriggers(raw, true)).find((t) => t.function_id === functionId && t.trigger_type === type),
        T,
        { message: `${type} trigger for ${functionId} listed by engine::triggers::list` },
      );
    }

    /** Registers a recording handler on `sub` bound to a trigger of `type` with `config`. */
    async function bind(type, config, { onCall, prefix = 'swatch' } = {}) {
      const id = `${uniq(prefix)}::handler`;
      const rec = new Recorder();
      a.fn(sub, id, async (payload) => {
        rec.push(payload);
        return onCall ? onCall(payload) : null;
      });
      const trigger = sub.registerTrigger({ type, function_id: id, config });
      await ready(a, sub, raw);
      await waitTrigger(id, type);
      return { id, rec, trigger };
    }

    // -------------------------------------------------------------------------------------------

    test('the eight stream functions are registered by the engine (§2)', async () => {
      const ids = new Set((await listFunctions(raw)).map((f) => f.function_id));
      for (const id of STREAM_FUNCTIONS) assert.ok(ids.has(id), `${id} missing from engine::functions::list`);
    });

    test('set / get / update / delete: results and the envelopes a `/` subscriber receives (§10 2–6)', async () => {
      const s = uniq('items-');
      const g = 'g1';
      const c = await sock('/');
      const sync = await join(c, { subscriptionId: 'sub-1', streamName: s, groupId: g });
      assertEnvelope(sync, { stream: s, group: g, id: null, event: { type: 'sync', data: [] } }, 'check 2: sync of an empty group');
      assert.ok(Number.isInteger(sync.seq) && typeof sync.epoch === 'string', `sync carries the position: ${show(sync)}`);
      const since = c.mark();

      assert.deepEqual(await S.set(s, g, 'a', { v: 1 }), { old_value: null, new_value: { v: 1 } }, 'check 4: create');
      assert.deepEqual(await S.set(s, g, 'a', { v: 2 }), { old_value: { v: 1 }, new_value: { v: 2 } }, 'check 4: update');
      assert.deepEqual(await S.get(s, g, 'a'), { v: 2 });
      assertNone(await S.get(s, g, 'missing'), 'get of a missing item');
      assertNone(await S.get(uniq('never-'), 'g', 'x'), 'get in a stream that never existed');

      const u1 = await S.update(s, g, 'b', [{ type: 'increment', path: 'n', by: 1 }]);
      assert.deepEqual(u1, { old_value: null, new_value: { n: 1 } }, 'check 5: update creates; no errors key');
      const u2 = await S.update(s, g, 'b', [{ type: 'increment', path: 'n', by: 2 }, { type: 'set', path: 'tag', value: 'x' }]);
      assert.deepEqual(u2, { old_value: { n: 1 }, new_value: { n: 3, tag: 'x' } });
      const u3 = await S.update(s, g, 'b', [{ type: 'merge', value: [1] }]);
      assert.equal(u3.errors?.[0]?.code, 'merge.value.not_an_object', `per-op errors as state: ${show(u3)}`);
      assert.deepEqual(u3.new_value, { n: 3, tag: 'x' });

      assert.deepEqual(await S.del(s, g, 'a'), { old_value: { v: 2 } }, 'check 6: delete returns {old_value}');
      assertNone(await S.get(s, g, 'a'), 'deleted');
      assert.deepEqual(await S.del(s, g, 'a'), { old_value: null }, 'check 6: delete of a missing item');

      const got = await untilMarker(c, s, g, since);
      const expected = [
        ['a', { type: 'create', data: { v: 1 } }],
        ['a', { type: 'update', data: { v: 2 } }],
        ['b', { type: 'create', data: { n: 1 } }],
        ['b', { type: 'update', data: { n: 3, tag: 'x' } }],
        ['b', { type: 'update', data: { n: 3, tag: 'x' } }],
        ['a', { type: 'delete', data: { v: 2 } }],
      ];
      assert.deepEqual(
        got.map((m) => [m.id, m.event]),
        expected,
        `one envelope per change, none for the missing delete; got ${show(got, 3000)}`,
      );
      for (const [i, m] of got.entries()) assertEnvelope(m, { stream: s, group: g, id: expected[i][0] }, `event #${i}`);
      assertConsecutive(got, 'events after the sync', sync.seq + 1);
      assert.equal(got[0].epoch, sync.epoch, 'the sync and the events share the epoch');
      for (let i = 1; i < got.length; i++) assert.ok(got[i].timestamp >= got[i - 1].timestamp, 'timestamps do not go back');

      // Item join: the item's value, or null for a missing item (§10 3).
      const itemSync = await join(c, { subscriptionId: 'sub-2', streamName: s, groupId: g, id: 'b' });
      assertEnvelope(itemSync, { stream: s, group: g, id: 'b', event: { type: 'sync', data: { n: 3, tag: 'x' } } }, 'check 3');
      const missingSync = await join(c, { subscriptionId: 'sub-3', streamName: s, groupId: g, id: 'nope' });
      assertEnvelope(missingSync, { stream: s, group: g, id: 'nope', event: { type: 'sync', data: null } }, 'check 3: missing');
      const groupSync = await join(c, { subscriptionId: 'sub-4', streamName: s, groupId: g });
      assert.deepEqual(groupSync.event.data, [{ n: 3, tag: 'x' }], 'group sync: the values');
    });

    test('input validation: deserialization_error and INVALID_STREAM_ADDRESS (§2, docs)', async () => {
      const s = uniq('bad-');
      await S.fails('stream::set', { stream_name: s, group_id: 'g', data: 1 }, 'deserialization_error');
      await S.fails('stream::set', { stream_name: s, group_id: 'g', item_id: 'i' }, 'deserialization_error');
      await S.fails('stream::get', { group_id: 'g', item_id: 'i' }, 'deserialization_error');
      await S.fails('stream::list', { stream_name: s }, 'deserialization_error');
      await S.fails('stream::send', { stream_name: s, group_id: 'g', type: 'x' }, 'deserialization_error');
      await S.fails('stream::send', { stream_name: s, group_id: 'g', type: 5, data: 1 }, 'deserialization_error');
      await S.fails('stream::list_all', 'nope', 'deserialization_error');
      await S.fails('stream::set', { stream_name: '', group_id: 'g', item_id: 'i', data: 1 }, 'INVALID_STREAM_ADDRESS');
      await S.fails('stream::set', { stream_name: s, group_id: 'g'.repeat(257), item_id: 'i', data: 1 }, 'INVALID_STREAM_ADDRESS');
      await S.fails('stream::set', { stream_name: s, group_id: 'g', item_id: 'i'.repeat(1025), data: 1 }, 'INVALID_STREAM_ADDRESS');
      await S.fails('stream::send', { stream_name: 's'.repeat(257), group_id: 'g', type: 't', data: 1 }, 'INVALID_STREAM_ADDRESS');
      assert.deepEqual(await S.set(s, 'g'.repeat(256), 'i'.repeat(1024), 1), { old_value: null, new_value: 1 }, 'limits are inclusive');
      assert.deepEqual(await S.list(s, 'g'), [], 'nothing written by the failed calls');
    });

    test('list, list_groups and list_all shapes (§10 11–12)', async () => {
      const s = uniq('lists-b-');
      const s2 = uniq('lists-a-');
      for (const id of ['c', 'a', 'b']) await S.set(s, 'g-2', id, { id });
      await S.set(s, 'g-1', 'x', 1);
      await S.set(s2, 'only', 'y', 2);
      assert.deepEqual(await S.list(s, 'g-2'), [{ id: 'c' }, { id: 'a' }, { id: 'b' }], 'values only, insertion order');
      assert.deepEqual(await S.list(s, 'no-such-group'), [], 'missing group → []');

      const groups = await S.groups(s);
      assert.deepEqual(groups, ['g-1', 'g-2'], 'list_groups: a bare sorted array of group ids');
      assert.deepEqual(await S.groups(uniq('nothing-')), [], 'unknown stream → []');

      const all = await S.all();
      assert.deepEqual(Object.keys(all).sort(), ['count', 'stream'], show(all));
      assert.ok(Array.isArray(all.stream));
      assert.equal(all.count, all.stream.length, 'count = number of streams');
      const ids = all.stream.map((x) => x.id);
      assert.deepEqual([...ids].sort(), ids, 'streams sorted by id');
      assert.equal(new Set(ids).size, ids.length, 'each stream once');
      assert.deepEqual(all.stream.find((x) => x.id === s), { id: s, groups: ['g-1', 'g-2'] });
      assert.deepEqual(all.stream.find((x) => x.id === s2), { id: s2, groups: ['only'] });
      assert.ok(ids.indexOf(s2) < ids.indexOf(s), 'lists-a before lists-b');
      for (const x of all.stream) assert.deepEqual([...x.groups].sort(), x.groups, `groups of ${x.id} sorted`);
    });

    test('send: type, event_type alias, both (type wins), neither ("message"), id, Void (§10 7–9, R2, R3)', async () => {
      const s = uniq('send-');
      const g = 'room';
      const group = await sock(groupPath(s, g));
      const item = await sock(groupPath(s, g, 'it'));
      const other = await sock(groupPath(s, 'elsewhere'));

      assertNone(await S.send(s, g, { type: 'ping', data: { x: 1 } }), 'check 7: send returns null');
      assertNone(await S.send(s, g, { event_type: 'todo_changed', data: { action: 'created' } }), 'check 8: event_type');
      assertNone(await S.send(s, g, { type: 'wins', event_type: 'loses', data: 2 }));
      assertNone(await S.send(s, g, { data: 'no name' }));
      assertNone(await S.send(s, g, { type: 'for-item', id: 'it', data: [1] }));
      assertNone(await S.send(s, g, { type: 'for-other-item', id: 'other', data: null }));
      // The seed's fire-and-forget call: only observable at the client (R3).
      await caller.trigger({
        function_id: 'stream::send',
        payload: { stream_name: s, group_id: g, id: 'change-1', event_type: 'todo_changed', data: { action: 'void' } },
        action: a.TriggerAction.Void(),
      });

      await group.next((m) => named('todo_changed')(m) && m.id === 'change-1', { timeoutMs: T, what: 'the Void send' });
      const got = envelopes(group);
      const ev = (name, data) => ({ type: 'event', event: { type: name, data } });
      assert.deepEqual(
        got.map((m) => [m.id, m.event]),
        [
          [null, ev('ping', { x: 1 })],
          [null, ev('todo_changed', { action: 'created' })],
          [null, ev('wins', 2)],
          [null, ev('message', 'no name')],
          ['it', ev('for-item', [1])],
          ['other', ev('for-other-item', null)],
          ['change-1', ev('todo_changed', { action: 'void' })],
        ],
        `group subscriber gets every send in order, no sync first; got ${show(got, 3000)}`,
      );
      for (const m of got) assertEnvelope(m, { stream: s, group: g, id: m.id });
      assertConsecutive(got, 'sends');

      // The item subscriber: only sends carrying its id (check 9).
      const itemGot = await untilMarker(item, s, g, 0, 'it');
      assert.deepEqual(itemGot.map((m) => m.event.event.type), ['for-item'], `item subscriber: ${show(itemGot, 2000)}`);
      const otherGot = await untilMarker(other, s, 'elsewhere');
      assert.deepEqual(otherGot, [], 'another group receives nothing');
    });

    test('path form: no sync, events from the first moment, ?sync=true, trailing slash, item form (R1; §10 21–24, 26)', async () => {
      const s = uniq('path-');
      const g = 'all';
      await S.set(s, g, 'x', { v: 1 });
      await S.set(s, g, 'y', { v: 2 });

      // An event published right after `open` is delivered, and is the first frame (no sync).
      const c1 = await sock(groupPath(s, g));
      const sent = S.send(s, g, { event_type: 'todo_changed', data: { action: 'created' } });
      const first = await c1.next(isEnvelope, { timeoutMs: T, what: 'first frame on the path form' });
      assertEnvelope(first, { stream: s, group: g, id: null, event: { type: 'event', event: { type: 'todo_changed', data: { action: 'created' } } } }, 'check 21/26');
      await sent;

      const slash = await sock(`${groupPath(s, g)}/`);
      const synced = await sock(`${groupPath(s, g)}?sync=true`);
      const itemX = await sock(groupPath(s, g, 'x'));
      const itemXSync = await sock(`${groupPath(s, g, 'x')}/?sync=true`);
      const missingSync = await sock(`${groupPath(s, g, 'nope')}?sync=true`);

      const syncFrame = await synced.next(isEnvelope, { timeoutMs: T, what: 'sync frame (?sync=true)' });
      assertEnvelope(syncFrame, { stream: s, group: g, id: null, event: { type: 'sync', data: [{ v: 1 }, { v: 2 }] } }, 'check 22');
      assert.ok(!('snapshot' in syncFrame) || syncFrame.snapshot === false, 'a requested sync is not a resume snapshot');
      const xSync = await itemXSync.next(isEnvelope, { timeoutMs: T, what: 'item sync frame' });
      assertEnvelope(xSync, { stream: s, group: g, id: 'x', event: { type: 'sync', data: { v: 1 } } }, 'item ?sync=true');
      const nSync = await missingSync.next(isEnvelope, { timeoutMs: T, what: 'missing item sync frame' });
      assertEnvelope(nSync, { stream: s, group: g, id: 'nope', event: { type: 'sync', data: null } }, 'missing item ?sync=true');

      await S.set(s, g, 'y', { v: 3 });
      await S.set(s, g, 'x', { v: 4 });
      await S.del(s, g, 'x');

      const changes = [
        ['y', 'update', { v: 3 }],
        ['x', 'update', { v: 4 }],
        ['x', 'delete', { v: 4 }],
      ];
      const asTuple = (m) => [m.id, m.event.type, m.event.data];
      const slashGot = noMarkers(await untilMarker(slash, s, g));
      assert.deepEqual(slashGot.map(asTuple), changes, 'trailing slash: the whole group, no sync');
      const syncedGot = noMarkers(await untilMarker(synced, s, g));
      assert.deepEqual(syncedGot.map(asTuple), [[null, 'sync', [{ v: 1 }, { v: 2 }]], ...changes], '?sync=true: sync, then events');
      const c1Raw = await untilMarker(c1, s, g);
      const c1Got = noMarkers(c1Raw);
      assert.equal(c1Got.filter(isSync).length, 0, 'no sync on the plain path form');
      assert.deepEqual(c1Got.slice(1).map(asTuple), changes);
      assertConsecutive(c1Raw, 'path-form envelopes');
      const xGot = noMarkers(await untilMarker(itemX, s, g, 0, 'x'));
      assert.deepEqual(xGot.map(asTuple), changes.filter(([id]) => id === 'x'), 'check 24: item form gets only its item');
      const xsGot = noMarkers(await untilMarker(itemXSync, s, g, 0, 'x'));
      assert.deepEqual(xsGot.map(asTuple), [['x', 'sync', { v: 1 }], ...changes.filter(([id]) => id === 'x')]);
      assert.ok(c1.open && slash.open && itemX.open, 'path sockets stay open');
    });

    test('path form: segments are percent-decoded; a join message adds a subscription (R1 1, 7; §10 23)', async () => {
      const s = uniq('pct ✓-');
      const c = await sock(`/stream/${encodeURIComponent(s)}/room%201/caf%C3%A9`);
      const slashGroup = await sock(`/stream/${encodeURIComponent(s)}/a%2Fb/`);
      await S.set(s, 'room 1', 'café', { ok: 1 });
      await S.set(s, 'room 1', 'other', { ok: 2 });
      await S.set(s, 'a/b', 'k', { ok: 3 });
      const m = await c.next(isEvent, { timeoutMs: T, what: 'event for group "room 1" item "café"' });
      assertEnvelope(m, { stream: s, group: 'room 1', id: 'café', event: { type: 'create', data: { ok: 1 } } }, 'check 23');
      const m2 = await slashGroup.next(isEvent, { timeoutMs: T, what: 'event for group "a/b"' });
      assertEnvelope(m2, { stream: s, group: 'a/b', id: 'k', event: { type: 'create', data: { ok: 3 } } }, '%2F decodes inside a segment');
      assert.deepEqual(
        (await untilMarker(c, s, 'room 1', 0, 'café')).map((x) => x.id),
        ['café'],
        'only the item "café"',
      );

      // Extra subscriptions on a path-form socket through join messages (R1 rule 7).
      const extra = await join(c, { subscriptionId: 'extra', streamName: s, groupId: 'a/b' });
      assertEnvelope(extra, { stream: s, group: 'a/b', id: null, event: { type: 'sync', data: [{ ok: 3 }] } }, 'join on a path socket');
      const since = c.mark();
      await S.set(s, 'a/b', 'k2', 4);
      const m3 = await c.next((x) => isEvent(x) && x.groupId === 'a/b', { since, timeoutMs: T, what: 'event of the joined group' });
      assert.equal(m3.id, 'k2');
    });

    test('overlapping subscriptions on one socket get one copy per subscription (§10 10)', async () => {
      const s = uniq('dup-');
      const c = await sock('/');
      await join(c, { subscriptionId: 'group', streamName: s, groupId: 'g' });
      await join(c, { subscriptionId: 'item', streamName: s, groupId: 'g', id: 'x' });
      const since = c.mark();
      await S.set(s, 'g', 'x', 1);
      await S.set(s, 'g', 'y', 2);
      const got = await untilMarker(c, s, 'g', since);
      assert.deepEqual(got.map((m) => m.id), ['x', 'x', 'y'], `two copies for x, one for y: ${show(got, 2000)}`);
      assert.deepEqual(got[0], got[1], 'the copies are identical');
      // Leaving one subscription stops its copies.
      await c.send({ type: 'leave', data: { subscriptionId: 'item', streamName: s, groupId: 'g' } });
      const since2 = c.mark();
      await S.set(s, 'g', 'x', 3);
      const got2 = await untilMarker(c, s, 'g', since2);
      assert.deepEqual(got2.map((m) => [m.id, m.event.data]), [['x', 3]], 'one copy after the leave');
    });

    test('a join with an existing subscriptionId replaces that subscription (§4.3)', async () => {
      const s = uniq('rejoin-');
      const c = await sock('/');
      await join(c, { subscriptionId: 'z', streamName: s, groupId: 'g1' });
      await join(c, { subscriptionId: 'z', streamName: s, groupId: 'g1' });
      let since = c.mark();
      await S.set(s, 'g1', 'k', 1);
      const same = await untilMarker(c, s, 'g1', since);
      assert.deepEqual(same.map((m) => m.id), ['k'], 're-joining the same group: one copy, not two');

      await join(c, { subscriptionId: 'z', streamName: s, groupId: 'g2' });
      since = c.mark();
      await S.set(s, 'g1', 'k', 2);
      await S.set(s, 'g2', 'k', 3);
      const g2 = await c.next((m) => isEvent(m) && m.groupId === 'g2', { since, timeoutMs: T, what: 'event of the new group' });
      assert.equal(g2.event.data, 3);
      // A marker on g2 (which z now follows) comes after everything published before it.
      const g1 = await untilMarker(c, s, 'g2', since);
      assert.deepEqual(g1.filter((m) => m.groupId === 'g1'), [], `subscription z moved to g2: nothing from g1 any more, got ${show(g1, 1500)}`);

      // After leaving z, nothing at all arrives.
      await c.send({ type: 'leave', data: { subscriptionId: 'z', streamName: s, groupId: 'g2' } });
      const probe = await sock('/');
      await join(probe, { subscriptionId: 'p', streamName: s, groupId: 'g1' });
      since = c.mark();
      await S.set(s, 'g1', 'k', 4);
      await probe.next((m) => isEvent(m) && m.event.data === 4, { timeoutMs: T, what: 'probe got the g1 event' });
      await S.set(s, 'g2', 'k', 5);
      await untilMarker(probe, s, 'g1');
      assert.deepEqual(envelopes(c, since), [], 'nothing after the leave');
    });

    test('unknown paths answer 404 NOT_FOUND; plain HTTP on / answers 426 (§10 1, docs)', async () => {
      const root = await sock('/');
      assert.ok(root.open, '/ upgrades');
      const ok = await sock('/stream/a/b');
      assert.ok(ok.open, '/stream/a/b upgrades (R1)');
      const httpBase = streamBase().replace(/^ws/, 'http');
      for (const p of ['/other', '/stream', '/stream/', '/stream/a', '/stream/a/', '/stream//b', '/stream/a//b', '/stream/a/b/c/d', '/streams/a/b']) {
        const r = await settle(RawClient.connect(`${streamBase()}${p}`, { timeoutMs: T }));
        assert.equal(r.ok, false, `${p} must not upgrade`);
        assert.match(String(r.error?.message), /HTTP 404/, `${p}: ${r.error?.message}`);
        const h = await httpRequest(`${httpBase}${p}`);
        assert.equal(h.status, 404, `${p}: plain GET status`);
        assert.equal(h.json?.code, 'NOT_FOUND', `${p}: body ${h.text}`);
        assert.equal(typeof h.json?.error, 'string', `${p}: body ${h.text}`);
      }
      const plain = await httpRequest(`${httpBase}/`);
      assert.equal(plain.status, 426, `plain HTTP GET / → 426, got ${plain.status} ${plain.text}`);
    });

    test('seq and epoch: +1 per event of a group, per group, shared by all subscribers (docs)', async () => {
      const s = uniq('seq-');
      const g1 = await sock(groupPath(s, 'g1'));
      const g2 = await sock(groupPath(s, 'g2'));
      const x = await sock(groupPath(s, 'g1', 'x'));
      for (let i = 0; i < 4; i++) {
        await S.set(s, 'g1', i % 2 ? 'x' : 'y', i);
        await S.send(s, 'g2', { type: 'tick', data: i });
        await S.update(s, 'g2', 'z', [{ type: 'increment', path: 'n', by: 1 }]);
      }
      await S.send(s, 'g1', { type: 'tick', id: 'x', data: 'x' });
      await S.del(s, 'g1', 'x');
      const e1 = await untilMarker(g1, s, 'g1');
      const e2 = await untilMarker(g2, s, 'g2');
      assert.equal(e1.length, 6);
      assert.equal(e2.length, 8);
      assertConsecutive(e1, 'group g1');
      assertConsecutive(e2, 'group g2');
      const ex = await untilMarker(x, s, 'g1', 0, 'x');
      assert.deepEqual(ex, e1.filter((m) => m.id === 'x'), 'an item subscriber gets the same envelopes (same seq/epoch)');
    });

    test('resume: ?last_seq&epoch (and lastSeq/epoch in a join) replay exactly the missed events; unknown epoch → snapshot sync (docs)', async () => {
      const s = uniq('resume-');
      const g = 'all';
      // The witness stays connected and sees every envelope of the group.
      const witness = await sock(groupPath(s, g));
      const c = await sock(groupPath(s, g));
      await S.set(s, g, 'a', 1);
      await S.set(s, g, 'b', 2);
      await S.send(s, g, { type: 'hello', data: 0 });
      const seen = await untilMarker(c, s, g);
      assert.equal(seen.length, 3);
      const epoch = seen[0].epoch;
      const lastSeq = seen.marker.seq; // the last envelope c processed
      await c.close();

      // Missed while away: four events.
      await S.set(s, g, 'a', 10);
      await S.update(s, g, 'c', [{ type: 'set', path: 'k', value: 'v' }]);
      await S.send(s, g, { type: 'while-away', data: { n: 1 } });
      await S.del(s, g, 'b');
      const w1 = await untilMarker(witness, s, g);
      assert.deepEqual(w1.slice(0, 3), seen, 'witness and c got the same envelopes');
      assert.deepEqual(w1[3], seen.marker);
      const missed = w1.slice(4);
      assert.deepEqual(
        missed.map((m) => [m.id, m.event.type]),
        [['a', 'update'], ['c', 'create'], [null, 'event'], ['b', 'delete']],
        `witness saw the missed events: ${show(w1, 3000)}`,
      );
      // In the log after the missed events: the witness's marker.
      const tail = [...missed, w1.marker];
      assertConsecutive([...seen, seen.marker, ...tail], 'the group', seen[0].seq);

      const resumeUrl = (seq, e) => `${groupPath(s, g)}?last_seq=${seq}&epoch=${encodeURIComponent(e)}`;
      const r = await sock(resumeUrl(lastSeq, epoch));
      const replayed = await waitFor(() => (envelopes(r).length >= tail.length ? envelopes(r) : false), T, {
        message: 'replayed envelopes',
      });
      assert.deepEqual(replayed, tail, 'exactly the missed envelopes (same seq, epoch, timestamp), in order, no sync');

      // Nothing missed: nothing replayed.
      const current = await sock(resumeUrl(w1.marker.seq, epoch));
      // `/` form: lastSeq/epoch in the join's data.
      const joined = await sock('/');
      await joined.send({ type: 'join', data: { subscriptionId: 'r', streamName: s, groupId: g, lastSeq: missed[1].seq, epoch } });
      // Unknown epoch: a snapshot sync, then live events.
      const stale = await sock(resumeUrl(1, 'not-an-epoch'));
      const staleJoin = await sock('/');
      await staleJoin.send({ type: 'join', data: { subscriptionId: 'q', streamName: s, groupId: g, lastSeq: 1, epoch: 'not-an-epoch' } });
      const snap = await stale.next(isEnvelope, { timeoutMs: T, what: 'snapshot sync for an unknown epoch' });
      const snap2 = await staleJoin.next(isEnvelope, { timeoutMs: T, what: 'snapshot sync for an unknown epoch (join)' });
      await joined.next((m) => isEnvelope(m) && m.seq === w1.marker.seq, { timeoutMs: T, what: 'replay on the `/` join' });

      await S.set(s, g, 'live', true);
      const live = await witness.next((m) => isEvent(m) && m.id === 'live', { timeoutMs: T, what: 'live event on the witness' });
      assert.equal(live.seq, w1.marker.seq + 1);

      const rAll = await untilMarker(r, s, g);
      assert.deepEqual(rAll, [...tail, live], 'resumed socket: replay, then live; no gap, no duplicate');

      const currentAll = await untilMarker(current, s, g);
      assert.deepEqual(currentAll.slice(0, 2), [live, rAll.marker], 'nothing replayed when nothing was missed');

      const joinedAll = await untilMarker(joined, s, g);
      assert.deepEqual(joinedAll.slice(0, 4), [...tail.slice(2), live], '`/` join resume replays after lastSeq');
      assert.equal(joinedAll.filter(isSync).length, 0, 'no sync on a resumed join');
      assertConsecutive(joinedAll, '`/` resume', missed[2].seq);

      for (const [label, m, socket] of [['path', snap, stale], ['join', snap2, staleJoin]]) {
        assertEnvelope(m, { stream: s, group: g, id: null }, `${label} snapshot`);
        assert.equal(m.event.type, 'sync', `${label}: a sync, got ${show(m)}`);
        assert.equal(m.snapshot, true, `${label}: snapshot: true`);
        assert.deepEqual(m.event.data, [10, { k: 'v' }], `${label}: the group's current values`);
        assert.equal(m.epoch, epoch, `${label}: the group's epoch`);
        assert.equal(m.seq, w1.marker.seq, `${label}: the snapshot's seq is the position when the client attached`);
        const got = await untilMarker(socket, s, g);
        assert.equal(got[0], m);
        assert.equal(got.filter(isSync).length, 1, `${label}: one sync`);
        assert.deepEqual(got[1], live, `${label}: then the live events`);
        assertConsecutive(got, `${label}: snapshot + live`);
      }
    });
    test('stream triggers get exactly the envelope (no seq/epoch), incl. stream::send; group/item filters and conditions (§5.1; §10 17)', async () => {
      const s = uniq('trig-');
      const cond = `${uniq('scond')}::check`;
      a.fn(sub, cond, async (p) => p.id !== 'b');
      const room1 = await bind('stream', { stream_name: s, group_id: 'room-1' });
      const room2 = await bind('stream', { stream_name: s, group_id: 'room-2' });
      const any = await bind('stream', { stream_name: s });
      const emptyGroup = await bind('stream', { stream_name: s, group_id: '', item_id: '' });
      const itemA = await bind('stream', { stream_name: s, item_id: 'a' });
      const conditioned = await bind('stream', { stream_name: s, group_id: 'room-1', condition_function_id: cond });
      const otherStream = await bind('stream', { stream_name: `${s}-other` });
      const c = await sock(groupPath(s, 'room-1'));

      await S.set(s, 'room-1', 'a', { v: 1 });
      await S.set(s, 'room-1', 'a', { v: 2 });
      await S.update(s, 'room-1', 'b', [{ type: 'increment', path: 'n', by: 1 }]);
      await S.del(s, 'room-1', 'a');
      await S.del(s, 'room-1', 'never');
      await S.send(s, 'room-1', { type: 'ping', data: { x: 1 } });
      await S.send(s, 'room-1', { event_type: 'todo_changed', id: 'a', data: { action: 'created' } });
      const pushed = await waitFor(() => (envelopes(c).length >= 6 ? envelopes(c) : false), T, { message: 'six envelopes on the socket' });
      assert.equal(pushed.length, 6, show(pushed, 3000));
      const expected = pushed.map(strip);

      const sorted = (xs) => [...xs].sort(byJson);
      await waitFor(() => room1.rec.count >= 6, T, { message: 'room-1 trigger got six envelopes' });
      assert.deepEqual(sorted(room1.rec.calls), sorted(expected), 'room-1 trigger: exactly the socket envelopes without seq/epoch');
      for (const p of room1.rec.calls) assert.ok(!('seq' in p) && !('epoch' in p), `no seq/epoch in ${show(p)}`);
      for (const id of ['a', 'b', null]) {
        assert.deepEqual(
          room1.rec.calls.filter((p) => p.id === id),
          expected.filter((p) => p.id === id),
          `in order per item (${id})`,
        );
      }
      await waitFor(() => any.rec.count >= 6 && emptyGroup.rec.count >= 6, T, { message: 'unfiltered triggers' });
      await waitFor(() => itemA.rec.count >= 4, T, { message: 'item_id trigger' });
      await waitFor(() => conditioned.rec.count >= 5, T, { message: 'conditioned trigger' });

      // room-2 as a positive control: its trigger fires for room-2 only.
      await S.set(s, 'room-2', 'z', 'z');
      await waitFor(() => room2.rec.count >= 1 && any.rec.count >= 7 && emptyGroup.rec.count >= 7, T, { message: 'room-2 event' });
      assert.deepEqual(room2.rec.calls.map((p) => [p.groupId, p.id, p.event]), [['room-2', 'z', { type: 'create', data: 'z' }]]);
      assert.ok(!room1.rec.calls.some((p) => p.groupId === 'room-2'), 'room-1 trigger never saw room-2');
      assert.equal(room1.rec.count, 6);
      assert.equal(any.rec.count, 7);
      assert.equal(emptyGroup.rec.count, 7, 'group_id "" and item_id "" match anything');
      assert.deepEqual(sorted(itemA.rec.calls), sorted(expected.filter((p) => p.id === 'a')), 'item_id filter');
      assert.deepEqual(
        sorted(conditioned.rec.calls),
        sorted(expected.filter((p) => p.id !== 'b')),
        'condition false skips only the events of b',
      );
      assert.equal(otherStream.rec.count, 0, 'another stream name never fires');
      for (const t of [room1, room2, any, emptyGroup, itemA, conditioned, otherStream]) t.trigger.unregister();
    });

    test('a stream trigger without stream_name fails with trigger_registration_failed (§10 18)', async () => {
      const binder = await RawClient.connect(engine.workerUrl);
      try {
        const fnId = `${uniq('nostream')}::fn`;
        await binder.register(fnId, async () => null);
        const cases = [
          ...[{ group_id: 'g' }, {}, null, { stream_name: 5 }, 'chat'].map((config) => ['stream', config]),
          ['stream:join', { stream_name: 5 }],
          ['stream:leave', 'chat'],
        ];
        for (const [triggerType, config] of cases) {
          const id = randomUUID();
          const since = binder.mark();
          await binder.send({ type: 'registertrigger', id, trigger_type: triggerType, function_id: fnId, config });
          const report = await binder.next((m) => m.type === 'triggerregistrationresult' && m.id === id, {
            since,
            timeoutMs: T,
            what: `triggerregistrationresult for ${triggerType} config ${show(config)}`,
          });
          assert.equal(report.error?.code, 'trigger_registration_failed', `${triggerType} config ${show(config)}: ${show(report)}`);
          assert.equal(typeof report.error?.message, 'string');
        }
        await binder.ping();
        assert.deepEqual((await listTriggers(raw, true)).filter((t) => t.function_id === fnId), [], 'failed registrations are not listed');
      } finally {
        await binder.close();
      }

      // Through the SDK: engine::register_trigger answers the error; registerTrigger is not listed.
      const fnId = `${uniq('sdk-nostream')}::fn`;
      a.fn(sub, fnId, async () => null);
      await ready(a, sub, raw);
      await S.fails('engine::register_trigger', { trigger_type: 'stream', function_id: fnId, config: { group_id: 'g' } }, 'trigger_registration_failed');
      const bad = sub.registerTrigger({ type: 'stream', function_id: fnId, config: { group_id: 'g' } });
      // Registrations of one connection are applied in order: once a later one is listed, the bad
      // one has been processed.
      const good = await bind('stream', { stream_name: uniq('later-') });
      assert.deepEqual(
        (await listTriggers(raw, true)).filter((t) => t.function_id === fnId),
        [],
        'the SDK registration without stream_name is not listed',
      );
      bad.unregister();
      good.trigger.unregister();
    });

    test('stream:join: payload, refusal on `/` (unauthorized envelope, socket usable), non-boolean and failing handlers admit, stream_name filter (§5.2; §10 13)', async () => {
      const s = uniq('join-');
      const joins = await bind('stream:join', { stream_name: s }, {
        prefix: 'onjoin',
        onCall: async (p) => {
          if (p.group_id === 'boom') throw new Error('join handler failed');
          if (p.group_id === 'weird') return { unauthorized: 'true' };
          return { unauthorized: p.group_id.startsWith('secret') };
        },
      });
      const c = await sock('/');
      const refused = await join(c, { subscriptionId: 'j1', streamName: s, groupId: 'secret' });
      assertEnvelope(refused, { stream: s, group: 'secret', id: null, event: { type: 'unauthorized' } }, 'check 13');
      const refusedItem = await join(c, { subscriptionId: 'j2', streamName: s, groupId: 'secret-2', id: 'it' });
      assertEnvelope(refusedItem, { stream: s, group: 'secret-2', id: 'it', event: { type: 'unauthorized' } }, 'item join refused');
      assert.ok(c.open, 'the socket stays open after a refusal');
      const admitted = await join(c, { subscriptionId: 'j3', streamName: s, groupId: 'open', id: 'it' });
      assert.equal(admitted.event.type, 'sync', 'a later join on the same socket works');
      assert.equal((await join(c, { subscriptionId: 'j4', streamName: s, groupId: 'weird' })).event.type, 'sync', 'non-boolean unauthorized admits');
      assert.equal((await join(c, { subscriptionId: 'j5', streamName: s, groupId: 'boom' })).event.type, 'sync', 'a failing handler admits');

      assert.deepEqual(
        joins.rec.calls.slice(0, 3),
        [
          { subscription_id: 'j1', stream_name: s, group_id: 'secret', id: null, context: null },
          { subscription_id: 'j2', stream_name: s, group_id: 'secret-2', id: 'it', context: null },
          { subscription_id: 'j3', stream_name: s, group_id: 'open', id: 'it', context: null },
        ],
        'join trigger payloads',
      );
      assert.equal(joins.rec.count, 5);

      // The filter: joins on another stream do not reach this trigger.
      const otherSync = await join(c, { subscriptionId: 'j6', streamName: `${s}-other`, groupId: 'secret' });
      assert.equal(otherSync.event.type, 'sync');
      assert.equal(joins.rec.count, 5, 'stream_name filter honoured');

      // A refused subscription receives nothing later.
      const since = c.mark();
      await S.set(s, 'secret', 'it', 1);
      await S.set(s, 'secret-2', 'it', 1);
      const got = await untilMarker(c, s, 'open', since, 'it');
      assert.deepEqual(got, [], `nothing for refused subscriptions: ${show(got, 2000)}`);
      joins.trigger.unregister();
    });

    test('stream:join on the path form: refusal → unauthorized then close 1008, no leave; events during the join are held (R1 3–4; §10 25, 27)', async () => {
      const s = uniq('pjoin-');
      const joins = await bind('stream:join', { stream_name: s }, {
        prefix: 'onpjoin',
        onCall: async (p) => {
          if (p.group_id.includes('held')) {
            // Published while this join is pending: delivered after approval, dropped on refusal.
            const payload = { stream_name: s, group_id: p.group_id, type: 'during-join', data: p.group_id };
            if (p.id) payload.id = p.id;
            await sub.trigger({ function_id: 'stream::send', payload });
          }
          return { unauthorized: p.group_id.startsWith('secret') };
        },
      });
      const leaves = await bind('stream:leave', { stream_name: s }, { prefix: 'onpleave' });

      const refused = await sock(groupPath(s, 'secret'));
      const closed = await refused.closed;
      assert.equal(closed.code, 1008, `close code ${show(closed)}`);
      const frames = envelopes(refused);
      assert.equal(frames.length, 1, `one frame before the close: ${show(frames)}`);
      assertEnvelope(frames[0], { stream: s, group: 'secret', id: null, event: { type: 'unauthorized' } }, 'check 25');

      const refusedHeld = await sock(groupPath(s, 'secret-held', 'it'));
      assert.equal((await refusedHeld.closed).code, 1008);
      assert.deepEqual(envelopes(refusedHeld).map((m) => [m.id, m.event.type]), [['it', 'unauthorized']], 'the held event is dropped on refusal');

      const held = await sock(groupPath(s, 'held'));
      const first = await held.next(isEnvelope, { timeoutMs: T, what: 'the event published during the join' });
      assertEnvelope(first, { stream: s, group: 'held', id: null, event: { type: 'event', event: { type: 'during-join', data: 'held' } } }, 'R1 rule 4');

      // Leave: once, with the implicit subscription's id (the same as the join's).
      const joinOfHeld = joins.rec.calls.find((p) => p.group_id === 'held');
      assert.ok(isUuid(joinOfHeld.subscription_id), `server-generated subscription id: ${show(joinOfHeld)}`);
      assert.deepEqual(joinOfHeld, { subscription_id: joinOfHeld.subscription_id, stream_name: s, group_id: 'held', id: null, context: null });
      await held.close();
      const leave = await waitFor(() => leaves.rec.calls.find((p) => p.group_id === 'held'), T, { message: 'leave of the path socket' });
      assert.deepEqual(leave, joinOfHeld, 'check 27: leave payload = join payload');
      await sleep(200);
      assert.equal(leaves.rec.calls.filter((p) => p.group_id === 'held').length, 1, 'leave called once');
      assert.deepEqual(
        leaves.rec.calls.filter((p) => p.group_id.startsWith('secret')),
        [],
        'no leave for refused subscriptions',
      );
      joins.trigger.unregister();
      leaves.trigger.unregister();
    });

    test('stream:leave: on a leave message, and once per remaining subscription when the socket closes (§4.5; §10 16)', async () => {
      const s = uniq('leave-');
      const leaves = await bind('stream:leave', { stream_name: s }, { prefix: 'onleave' });
      const c = await sock('/');
      await join(c, { subscriptionId: 'l1', streamName: s, groupId: 'g' });
      await join(c, { subscriptionId: 'l2', streamName: s, groupId: 'g', id: 'x' });
      await join(c, { subscriptionId: 'l3', streamName: s, groupId: 'g2' });
      await join(c, { subscriptionId: 'l4', streamName: `${s}-other`, groupId: 'g' });
      await c.send({ type: 'leave', data: { subscriptionId: 'l3', streamName: s, groupId: 'g2' } });
      await waitFor(() => leaves.rec.count >= 1, T, { message: 'leave for l3' });
      assert.deepEqual(leaves.rec.calls, [{ subscription_id: 'l3', stream_name: s, group_id: 'g2', id: null, context: null }]);

      await c.close();
      await waitFor(() => leaves.rec.count >= 3, T, { message: 'leaves for l1 and l2 on close' });
      await sleep(200);
      const byId = [...leaves.rec.calls].sort((x, y) => x.subscription_id.localeCompare(y.subscription_id));
      assert.deepEqual(byId, [
        { subscription_id: 'l1', stream_name: s, group_id: 'g', id: null, context: null },
        { subscription_id: 'l2', stream_name: s, group_id: 'g', id: 'x', context: null },
        { subscription_id: 'l3', stream_name: s, group_id: 'g2', id: null, context: null },
      ], 'once per subscription; the left one not again; other streams filtered out');
      leaves.trigger.unregister();
    });

    test('createStream: get/list/list_groups answered by the worker, set/delete through it publish events, joins sync through it (§2.0; §10 20)', async () => {
      const s = uniq('custom-');
      const store = new Map([['g\u0000w1', { from: 'worker' }]]);
      const calls = [];
      const key = (i) => `${i.group_id}\u0000${i.item_id}`;
      const impl = {
        async get(input) {
          calls.push(['get', input]);
          return store.get(key(input)) ?? null;
        },
        async set(input) {
          calls.push(['set', input]);
          if (input.item_id === 'no-result') return undefined;
          const old = store.get(key(input)) ?? null;
          store.set(key(input), input.data);
          return { old_value: old, new_value: input.data };
        },
        async delete(input) {
          calls.push(['delete', input]);
          const old = store.get(key(input)) ?? null;
          store.delete(key(input));
          return { old_value: old };
        },
        async list(input) {
          calls.push(['list', input]);
          return [...store.entries()].filter(([k]) => k.startsWith(`${input.group_id}\u0000`)).map(([, v]) => v);
        },
        async listGroups(input) {
          calls.push(['list_groups', input]);
          return [...new Set([...store.keys()].map((k) => k.split('\u0000')[0]))].sort();
        },
        async update() {
          throw new Error('update is not registered by createStream');
        },
      };
      createStream(sub, s, impl);
      await ready(a, sub, raw);
      const ids = new Set((await listFunctions(raw)).map((f) => f.function_id));
      for (const op of ['get', 'set', 'delete', 'list', 'list_groups']) {
        assert.ok(ids.has(`stream::${op}(${s})`), `createStream registered stream::${op}(${s})`);
      }

      assert.deepEqual(await S.get(s, 'g', 'w1'), { from: 'worker' }, 'stream::get answered by the worker');
      assert.deepEqual(calls.at(-1), ['get', { stream_name: s, group_id: 'g', item_id: 'w1' }], 'the override gets the caller input');
      assertNone(await S.get(s, 'g', 'nothing'));
      assert.deepEqual(await S.list(s, 'g'), [{ from: 'worker' }], 'stream::list answered by the worker');
      assert.deepEqual(await S.groups(s), ['g'], 'stream::list_groups answered by the worker');

      const c = await sock('/');
      const sync = await join(c, { subscriptionId: 'cs', streamName: s, groupId: 'g' });
      assertEnvelope(sync, { stream: s, group: 'g', id: null, event: { type: 'sync', data: [{ from: 'worker' }] } }, 'group join syncs through list');
      const itemSync = await join(c, { subscriptionId: 'ci', streamName: s, groupId: 'g', id: 'w1' });
      assertEnvelope(itemSync, { stream: s, group: 'g', id: 'w1', event: { type: 'sync', data: { from: 'worker' } } }, 'item join syncs through get');
      assert.ok(calls.some(([op, i]) => op === 'list' && i.stream_name === s && i.group_id === 'g'), 'list override called for the sync');
      const pathSync = await sock(`${groupPath(s, 'g')}?sync=true`);
      const ps = await pathSync.next(isEnvelope, { timeoutMs: T, what: 'path sync through the override' });
      assert.deepEqual(ps.event, { type: 'sync', data: [{ from: 'worker' }] });

      const watcher = await bind('stream', { stream_name: s });
      const since = c.mark();
      assert.deepEqual(await S.set(s, 'g', 'n1', { v: 1 }), { old_value: null, new_value: { v: 1 } });
      assert.deepEqual(await S.set(s, 'g', 'n1', { v: 2 }), { old_value: { v: 1 }, new_value: { v: 2 } });
      assert.deepEqual(await S.del(s, 'g', 'n1'), { old_value: { v: 2 } });
      assert.deepEqual(await S.del(s, 'g', 'n1'), { old_value: null });
      await S.fails('stream::set', { stream_name: s, group_id: 'g', item_id: 'no-result', data: 1 }, 'STREAM_SET_ERROR');
      assert.deepEqual(await S.list(s, 'g'), [{ from: 'worker' }], 'the worker holds the data, not the engine');
      const got = await untilMarker(c, s, 'g', since);
      assert.deepEqual(
        got.map((m) => [m.id, m.event]),
        [
          ['n1', { type: 'create', data: { v: 1 } }],
          ['n1', { type: 'update', data: { v: 2 } }],
          ['n1', { type: 'delete', data: { v: 2 } }],
        ],
        `the engine publishes the overrides' changes (group subscriber): ${show(got, 2000)}`,
      );
      assertConsecutive(got, 'override events');
      const changes = () => noMarkers(watcher.rec.calls);
      await waitFor(() => changes().length >= 3, T, { message: 'stream trigger got the override events' });
      assert.deepEqual(changes(), got.map(strip), 'stream triggers fire for the overrides\' changes too');
      watcher.trigger.unregister();
    });

    test('bad client input: invalid_message error frames keep the socket usable; blank, binary, ping; > 64 KiB closes 1009', async () => {
      const s = uniq('badin-');
      const c = await sock('/');
      let since = c.mark();
      await c.send('{not json');
      const e1 = await c.next((m) => m.type === 'error', { since, timeoutMs: T, what: 'error frame for invalid JSON' });
      assert.equal(e1.error?.code, 'invalid_message', show(e1));
      assert.equal(typeof e1.error?.message, 'string');
      since = c.mark();
      await c.send({ type: 'join', data: { subscriptionId: 'x', streamName: s } });
      const e2 = await c.next((m) => m.type === 'error', { since, timeoutMs: T, what: 'error frame for a join without groupId' });
      assert.equal(e2.error?.code, 'invalid_message', show(e2));
      since = c.mark();
      await c.send({ type: 'join', data: { subscriptionId: 1, streamName: s, groupId: 'g' } });
      const e3 = await c.next((m) => m.type === 'error', { since, timeoutMs: T, what: 'error frame for a numeric subscriptionId' });
      assert.equal(e3.error?.code, 'invalid_message', show(e3));
      since = c.mark();
      await c.send({ type: 'subscribe', data: { subscriptionId: 'x', streamName: s, groupId: 'g' } });
      const e4 = await c.next((m) => m.type === 'error', { since, timeoutMs: T, what: 'error frame for an unknown message type' });
      assert.equal(typeof e4.error?.code, 'string', show(e4));
      await c.send('   ');
      await c.send('');

      // Still working: a join as a binary frame holding JSON.
      since = c.mark();
      await c.send(Buffer.from(JSON.stringify({ type: 'join', data: { subscriptionId: 'ok', streamName: s, groupId: 'g' } })), { binary: true });
      const sync = await c.next(isSync, { since, timeoutMs: T, what: 'sync after a binary join' });
      assert.equal(sync.streamName, s);
      const blankErrors = c.messages(since).filter((m) => m.type === 'error');
      assert.deepEqual(blankErrors, [], 'blank frames are ignored silently');

      // WebSocket ping → pong.
      const pong = new Promise((resolve) => c.ws.once('pong', (data) => resolve(data.toString())));
      c.ws.ping('are-you-there');
      assert.equal(await withTimeout(pong, T, 'pong'), 'are-you-there');

      // A big but allowed frame (unknown fields are ignored).
      since = c.mark();
      await c.send({ type: 'join', data: { subscriptionId: 'big', streamName: s, groupId: 'g2', pad: 'p'.repeat(60 * 1024) } });
      assert.equal((await c.next(isSync, { since, timeoutMs: T, what: 'sync for a 60 KiB join' })).groupId, 'g2');
      await S.set(s, 'g', 'k', 1);
      await c.next((m) => isEvent(m) && m.id === 'k', { since, timeoutMs: T, what: 'event after the bad input' });

      // Over 64 KiB: the server closes with 1009.
      await c.send('x'.repeat(70 * 1024)).catch(() => {});
      const closed = await withTimeout(c.closed, T, 'close after a frame over 64 KiB');
      assert.equal(closed.code, 1009, `close code ${show(closed)}`);

      // Path-form sockets reject bad frames the same way and keep their subscription.
      const p = await sock(groupPath(s, 'g'));
      await p.send('{bad');
      await p.next((m) => m.type === 'error' && m.error?.code === 'invalid_message', { timeoutMs: T, what: 'error frame on a path socket' });
      await S.set(s, 'g', 'k', 2);
      const ev = await p.next((m) => isEvent(m) && m.id === 'k', { timeoutMs: T, what: 'event after a bad frame on a path socket' });
      assert.equal(ev.event.data, 2);
    });
  });
}
