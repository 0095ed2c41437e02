// Logger inside a handler → kept log records (protocol.md §7, §12.1, §11.27, §11.32).
// OTel is process-global in every SDK generation, so this suite owns the only OTel-enabled worker
// of its test file.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { spawn } from 'node:child_process';
import { RawClient, TRINE_BIN, listWorkers, runCli, sleep, startEngine, trackChild, uniq, waitFor } from '../harness.mjs';
import { Workers, ready } from '../common.mjs';

/** Parses `trine logs --json` output: a JSON array, an object with `logs`, or one record per line. */
export function parseLogOutput(stdout) {
  const text = stdout.trim();
  if (!text) return [];
  try {
    const whole = JSON.parse(text);
    if (Array.isArray(whole)) return whole;
    if (Array.isArray(whole?.logs)) return whole.logs;
    return [whole];
  } catch {
    return text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }
}

export function loggerSuite(a) {
  describe(`Logger with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let w;
    const name = uniq(`logging-${a.gen}-`);
    const p = uniq('log');

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      // A real worker: the raw query connection registers a function, so it is legitimately listed.
      await raw.register(`${p}::raw-peer`, async () => 'peer');
      workers = new Workers(a);
      w = workers.connect(engine.workerUrl, { name, otel: true });
      a.fn(w, `${p}::log`, async (input) => {
        new a.Logger().info(input.message, input.data);
        return { logged: true };
      });
      await ready(a, w, raw);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('new Logger().info inside a handler is kept and listed by engine::logs::list', async () => {
      const message = `compat-log-${randomUUID()}`;
      assert.deepEqual(await raw.call(`${p}::log`, { message, data: { k: 1 } }), { logged: true });
      const record = await waitFor(
        async () => (await raw.call('engine::logs::list', {})).logs.find((l) => l.message === message),
        5000,
        { message: 'log record listed' },
      );
      assert.equal(record.level, 'info');
      assert.deepEqual(record.data, { k: 1 });
      assert.equal(typeof record.seq, 'number');
      // Inside a handler the Logger carries the active span's ids (§7.1), so the record can be
      // attributed to the worker and the function whose handler logged it.
      assert.match(record.trace_id ?? '', /^[0-9a-f]{32}$/, `trace_id ${record.trace_id}`);
      assert.match(record.span_id ?? '', /^[0-9a-f]{16}$/, `span_id ${record.span_id}`);
      assert.equal(record.function_id, `${p}::log`);
      assert.equal(record.worker_name, name);
      assert.equal(record.worker_id, w.workerId);

      const byFunction = await raw.call('engine::logs::list', { function_id: `${p}::log` });
      assert.ok(byFunction.logs.some((l) => l.message === message), 'function_id filter keeps it');
      const otherFunction = await raw.call('engine::logs::list', { function_id: `${p}::raw-peer` });
      assert.ok(!otherFunction.logs.some((l) => l.message === message), 'function_id filter drops it');
      const byWorker = await raw.call('engine::logs::list', { worker: name });
      assert.ok(byWorker.logs.some((l) => l.message === message), 'worker filter keeps it');
      assert.ok(record.time_unix_nano !== undefined && record.time_unix_nano !== null, 'time_unix_nano set');

      const searched = await raw.call('engine::logs::list', { search: message });
      assert.ok(searched.logs.some((l) => l.message === message), 'search filter finds it');
      assert.ok(searched.logs.every((l) => JSON.stringify(l).includes(message)), 'search filters out others');

      const warnOnly = await raw.call('engine::logs::list', { level: 'warn' });
      assert.ok(!warnOnly.logs.some((l) => l.message === message), 'level filter drops info records');

      const later = await raw.call('engine::logs::list', { after_seq: record.seq });
      assert.ok(!later.logs.some((l) => l.message === message), 'after_seq pages past the record');
      assert.equal(typeof later.next_seq, 'number');
    });

    test('trine logs prints the record', async () => {
      const message = `compat-cli-${randomUUID()}`;
      await raw.call(`${p}::log`, { message, data: { k: 1 } });
      await waitFor(
        async () => (await raw.call('engine::logs::list', { search: message })).logs.length > 0,
        5000,
        { message: 'log record kept' },
      );
      const json = await runCli(['logs', '--url', engine.workerUrl, '--json']);
      assert.equal(json.code, 0, json.stderr);
      const record = parseLogOutput(json.stdout).find((l) => l.message === message);
      assert.ok(record, `trine logs --json lists ${message}`);
      assert.deepEqual(record.data, { k: 1 });
      assert.equal(record.level, 'info');

      const text = await runCli(['logs', '--url', engine.workerUrl, '--level', 'info']);
      assert.equal(text.code, 0, text.stderr);
      assert.ok(text.stdout.includes(message), 'plain output includes the message');

      const filtered = await runCli(['logs', '--url', engine.workerUrl, '--level', 'error']);
      assert.equal(filtered.code, 0, filtered.stderr);
      assert.ok(!filtered.stdout.includes(message), '--level error hides info records');

      const byFunction = await runCli(['logs', '--url', engine.workerUrl, '--function', `${p}::log`, '--json']);
      assert.ok(parseLogOutput(byFunction.stdout).some((l) => l.message === message), '--function keeps it');
      const otherFunction = await runCli(['logs', '--url', engine.workerUrl, '--function', `${p}::raw-peer`]);
      assert.equal(otherFunction.code, 0, otherFunction.stderr);
      assert.ok(!otherFunction.stdout.includes(message), '--function of another function hides it');
      const byWorker = await runCli(['logs', '--url', engine.workerUrl, '--worker', name, '--json']);
      assert.ok(parseLogOutput(byWorker.stdout).some((l) => l.message === message), '--worker keeps it');
    });

    test('trine logs --follow prints records logged after it started', async () => {
      const follower = spawn(TRINE_BIN, ['logs', '--url', engine.workerUrl, '--follow', '--json'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      trackChild(follower);
      let out = '';
      follower.stdout.on('data', (c) => {
        out += c.toString('utf8');
      });
      try {
        await sleep(300);
        const message = `compat-follow-${randomUUID()}`;
        await raw.call(`${p}::log`, { message, data: { k: 2 } });
        const record = await waitFor(
          () => parseLogOutput(out.split('\n').filter((l) => l.includes(message)).join('\n'))[0],
          5000,
          { message: 'followed record printed' },
        );
        assert.deepEqual(record.data, { k: 2 });
        assert.equal(follower.exitCode, null, '--follow keeps running');
      } finally {
        const exited =
          follower.exitCode !== null || follower.signalCode !== null
            ? Promise.resolve()
            : new Promise((resolve) => follower.once('exit', resolve));
        if (follower.exitCode === null && follower.signalCode === null) follower.kill('SIGTERM');
        await exited;
      }
    });

    test('the telemetry connection is not listed as a worker (§7.3, §12.1d)', async () => {
      const workerId = w.workerId;
      assert.equal(typeof workerId, 'string', 'SDK learned its worker_id from workerregistered');
      const rawId = raw.messages().find((m) => m.type === 'workerregistered')?.worker_id;
      assert.equal(typeof rawId, 'string', 'raw client got workerregistered');
      const expected = [workerId, rawId].sort();
      // Connections closed by earlier tests (e.g. the `trine logs` CLI) may take a moment to be
      // cleaned up; the telemetry socket stays open for the whole test, so it cannot hide here.
      let listed = [];
      await waitFor(
        async () => {
          listed = (await listWorkers(raw)).filter((x) => x.runtime !== 'engine');
          return JSON.stringify(listed.map((x) => x.id).sort()) === JSON.stringify(expected);
        },
        2000,
        { message: 'worker list settles' },
      ).catch(() => {});
      assert.deepEqual(
        listed.map((x) => x.id).sort(),
        expected,
        `only the SDK worker and the raw peer are workers: ${JSON.stringify(listed.map((x) => [x.id, x.name]))}`,
      );
      const mine = listed.find((x) => x.id === workerId);
      assert.equal(mine.name, name);
      assert.equal(mine.runtime, 'node');
      assert.equal(mine.version, a.gen);
    });
  });
}
