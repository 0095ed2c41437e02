// Adapter for npm iii-sdk 0.11.6: `registerFunction(id, handler, options)`, IIIInvocationError,
// Logger exported by iii-sdk, telemetry on `/otel`, still sends registerservice.
import assert from 'node:assert/strict';
import * as sdk from 'iii-sdk';

export const gen = '0.11.6';
export const sdkEntry = import.meta.resolve('iii-sdk');
export const loggerEntry = undefined;
export const { TriggerAction, Logger, IIIInvocationError } = sdk;
export const hasMetadataArg = false;
export const providerSeesMetadata = true;
export const handlesUnregisterTrigger = false;

export function connect(url, { name, otel = false, ...rest } = {}) {
  return sdk.registerWorker(url, {
    workerName: name,
    otel: { enabled: otel },
    enableMetricsReporting: otel,
    ...rest,
  });
}

export function fn(iii, id, handler, options = {}) {
  return iii.registerFunction(id, handler, options);
}

export async function shutdown(iii) {
  await iii.shutdown();
}

/** protocol.md §1.7: IIIInvocationError with `.code`, `.message` = "<code>: <message>". */
export function assertInvocationError(err, code, message) {
  assert.ok(err instanceof IIIInvocationError, `expected IIIInvocationError, got ${err?.stack ?? JSON.stringify(err)}`);
  assert.equal(err.code, code, `error code (${err.message})`);
  assert.ok(err.message.startsWith(`${code}: `), `message "${err.message}" must start with "${code}: "`);
  const inner = err.message.slice(code.length + 2);
  assert.ok(inner.length > 0, 'error message must be readable');
  if (message !== undefined) assert.equal(inner, message);
  return { code: err.code, message: inner, stacktrace: err.stacktrace };
}

export function assertTimeoutError(err, ms) {
  assert.ok(err instanceof IIIInvocationError, `expected IIIInvocationError, got ${err?.stack ?? err}`);
  assert.equal(err.code, 'TIMEOUT');
  assert.equal(err.message, `TIMEOUT: invocation timed out after ${ms}ms`);
}
