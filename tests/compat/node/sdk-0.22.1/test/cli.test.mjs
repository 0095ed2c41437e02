// The `trine call` CLI against functions served by an SDK worker.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as a from '../adapter.mjs';
import { RawClient, runCli, startEngine, uniq } from '../../lib/harness.mjs';
import { Workers, ready } from '../../lib/common.mjs';

describe('trine call', () => {
  let engine;
  let raw;
  let workers;
  const p = uniq('cli');

  before(async () => {
    engine = await startEngine();
    raw = await RawClient.connect(engine.workerUrl);
    workers = new Workers(a);
    const w = workers.connect(engine.workerUrl);
    a.fn(w, `${p}::double`, async ({ n }) => ({ doubled: n * 2 }));
    a.fn(w, `${p}::fail`, async () => {
      throw new Error('cli boom');
    });
    await ready(a, w, raw);
  });

  after(async () => {
    await workers?.shutdownAll();
    await raw?.close();
    await engine?.dispose();
  });

  test('calls a built-in function and prints the JSON result', async () => {
    const r = await runCli(['call', 'engine::echo', '--data', '{"a":[1,2],"b":"x"}', '--url', engine.workerUrl]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { a: [1, 2], b: 'x' });
  });

  test('calls a function served by an SDK worker', async () => {
    const r = await runCli(['call', `${p}::double`, '--data', '{"n":21}', '--url', engine.workerUrl]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { doubled: 42 });
  });

  test('handler error: non-zero exit, error body on stderr', async () => {
    const r = await runCli(['call', `${p}::fail`, '--data', '{}', '--url', engine.workerUrl]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /invocation_failed/);
    assert.match(r.stderr, /cli boom/);
    assert.equal(r.stdout.trim(), '');
  });

  test('unknown function: non-zero exit with function_not_found', async () => {
    const r = await runCli(['call', `${p}::missing`, '--data', '{}', '--url', engine.workerUrl]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /function_not_found/);
  });
});
