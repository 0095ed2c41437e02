// Helpers shared by the suites that drive an SDK through its adapter (sdk-*/adapter.mjs).

import { uniq, waitForCallable } from './harness.mjs';

/**
 * Registers a probe function on `iii` and waits until a raw client can call it. Because one
 * connection's registrations are applied in order, everything `iii` registered before is then live.
 */
export async function ready(a, iii, raw, timeoutMs = 8000) {
  const probe = `${uniq('probe')}::ready`;
  a.fn(iii, probe, async () => 'ready');
  await waitForCallable(raw, probe, { timeoutMs });
}

/** Collects the workers created by a suite and shuts them all down. */
export class Workers {
  constructor(a) {
    this.a = a;
    this.list = [];
  }

  connect(url, options = {}) {
    const iii = this.a.connect(url, { name: options.name ?? uniq(`compat-${this.a.gen}-`), ...options });
    this.list.push(iii);
    return iii;
  }

  async shutdown(iii) {
    const i = this.list.indexOf(iii);
    if (i >= 0) this.list.splice(i, 1);
    await this.a.shutdown(iii);
  }

  async shutdownAll() {
    // Reverse order: in 0.9.0/0.11.6 shutdown() also tears down the process-global OTel state,
    // which must outlive the workers created before it.
    for (const iii of this.list.reverse()) {
      await this.a.shutdown(iii).catch(() => {});
    }
    this.list = [];
  }
}

/** Records handler inputs and resolves waiters when a given number of calls has arrived. */
export class Recorder {
  constructor() {
    this.calls = [];
  }

  push(value) {
    this.calls.push(value);
  }

  get count() {
    return this.calls.length;
  }
}

/** Strips channel reader/writer objects (the SDK turns refs into live objects) from an input. */
export function plain(input) {
  if (input === null || typeof input !== 'object') return input;
  const out = {};
  for (const [k, v] of Object.entries(input)) {
    if (k === 'request_body' || k === 'response') {
      // The SDK turns a channel ref into a ChannelReader/ChannelWriter object; keep its class name.
      out[k] = v === undefined || v === null ? v : (v.constructor?.name ?? typeof v);
      continue;
    }
    out[k] = v;
  }
  return JSON.parse(JSON.stringify(out));
}
