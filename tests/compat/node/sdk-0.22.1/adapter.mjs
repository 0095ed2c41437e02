// Adapter for npm iii-sdk 0.22.1: `registerFunction(id, handler, options)`, InvocationError,
// Logger from @iii-dev/helpers/observability, reattach + heartbeat, handlers get (payload, metadata).
import assert from 'node:assert/strict';
import * as sdk from 'iii-sdk';
import { Logger as HelpersLogger } from '@iii-dev/helpers/observability';

export const gen = '0.22.1';
export const sdkEntry = import.meta.resolve('iii-sdk');
export const loggerEntry = import.meta.resolve('@iii-dev/helpers/observability');
export const { TriggerAction, InvocationError } = sdk;
export const Logger = HelpersLogger;
export const hasMetadataArg = true;
export const providerSeesMetadata = true;
export const handlesUnregisterTrigger = true;

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

/** protocol.md §3.1: InvocationError with `.code`, `.message` = "<code>: <message>". */
export function assertInvocationError(err, code, message) {
  assert.ok(err instanceof InvocationError, `expected InvocationError, got ${err?.stack ?? JSON.stringify(err)}`);
  assert.equal(err.code, code, `error code (${err.message})`);
  assert.ok(err.message.startsWith(`${code}: `), `message "${err.message}" must start with "${code}: "`);
  const inner = err.message.slice(code.length + 2);
  assert.ok(inner.length > 0, 'error message must be readable');
  if (message !== undefined) assert.equal(inner, message);
  return { code: err.code, message: inner, stacktrace: err.stacktrace };
}

export function assertTimeoutError(err, ms) {
  assert.ok(err instanceof InvocationError, `expected InvocationError, got ${err?.stack ?? err}`);
  assert.equal(err.code, 'TIMEOUT');
  assert.equal(err.message, `TIMEOUT: invocation timed out after ${ms}ms`);
}
