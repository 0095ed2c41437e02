// A worker run as its own process so that tests can SIGKILL it mid-call.
// Usage: node worker-proc.mjs '<json config>'
//   config: { gen, sdkEntry, loggerEntry?, url, name, otel?, functions: [{id, kind, ms?}], httpTriggers?: [...] }
// kinds: echo (returns input), sleep (waits ms then returns {slept}), hang (never settles),
//        log (Logger.info(input.message, input.data), returns {logged:true}).
// Prints "STARTED" once registrations are issued and "CALLED <id> <json>" when a handler starts.

const config = JSON.parse(process.argv[2]);
const sdk = await import(config.sdkEntry);

let Logger = sdk.Logger;
if (config.loggerEntry) Logger = (await import(config.loggerEntry)).Logger;

const iii = sdk.registerWorker(config.url, {
  workerName: config.name,
  otel: { enabled: Boolean(config.otel) },
  enableMetricsReporting: Boolean(config.otel),
});

function register(id, handler, options = {}) {
  if (config.gen === '0.9.0') return iii.registerFunction({ id, ...options }, handler);
  return iii.registerFunction(id, handler, options);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

for (const f of config.functions ?? []) {
  register(f.id, async (input) => {
    process.stdout.write(`CALLED ${f.id} ${JSON.stringify(input ?? null)}\n`);
    switch (f.kind) {
      case 'echo':
        return input;
      case 'sleep':
        await sleep(input?.ms ?? f.ms ?? 1000);
        return { slept: input?.ms ?? f.ms ?? 1000 };
      case 'hang':
        return new Promise(() => {});
      case 'log':
        new Logger().info(input.message, input.data);
        return { logged: true };
      default:
        throw new Error(`unknown kind ${f.kind}`);
    }
  });
}
for (const t of config.httpTriggers ?? []) {
  iii.registerTrigger({ type: 'http', function_id: t.function_id, config: t.config });
}

process.stdout.write('STARTED\n');

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, async () => {
    await iii.shutdown().catch(() => {});
    process.exit(0);
  });
}
