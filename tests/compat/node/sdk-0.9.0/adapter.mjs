// Adapter for npm iii-sdk 0.9.0: the seed-era API (`registerFunction({ id }, handler)`), errors
// surfaced as the raw ErrorBody object, Logger exported by iii-sdk, telemetry socket on `/`.
import assert from 'node:assert/strict';
import * as sdk from 'iii-sdk';

export const gen = '0.9.0';
export const sdkEntry = import.meta.resolve('iii-sdk');
export const loggerEntry = undefined;
export const { TriggerAction, Logger } = sdk;
export const hasMetadataArg = false;
export const providerSeesMetadata = false;
export const handlesUnregisterTrigger = false;

/** registerWorker with OTel off unless asked (OTel state is process-global in every generation). */
export function connect(url, { name, otel = false, ...rest } = {}) {
  return sdk.registerWorker(url, {
    workerName: name,
    otel: { enabled: otel },
    enableMetricsReporting: otel,
    ...rest,
  });
}

export function fn(iii, id, handler, options = {}) {
  return iii.registerFunction({ id, ...options }, handler);
}

export async function shutdown(iii) {
  const ws = iii.ws;
  // 0.9.0 removes every listener before closing; a socket still connecting would then emit an
  // unhandled 'error'. Keep a no-op listener on it.
  ws?.on?.('error', () => {});
  await iii.shutdown();
  ws?.on?.('error', () => {});
}

/** protocol.md §3.1/§12.4: 0.9.0 rejects with the raw ErrorBody object, not an Error. */
export function assertInvocationError(err, code, message) {
  assert.ok(!(err instanceof Error), `0.9.0 must reject with the raw error body, got ${err?.stack ?? err}`);
  assert.equal(typeof err, 'object');
  assert.equal(err.code, code, `error code (body: ${JSON.stringify(err)})`);
  assert.equal(typeof err.message, 'string');
  assert.ok(err.message.length > 0, 'error message must be readable');
  if (message !== undefined) assert.equal(err.message, message);
  return { code: err.code, message: err.message, stacktrace: err.stacktrace };
}

/** protocol.md §1.7: 0.9.0 timeout is a plain Error without code. */
export function assertTimeoutError(err, ms, functionId) {
  assert.ok(err instanceof Error, `timeout must be an Error, got ${JSON.stringify(err)}`);
  assert.equal(err.code, undefined);
  assert.equal(err.message, `Invocation timeout after ${ms}ms: ${functionId}`);
}
