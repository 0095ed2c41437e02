// HTTP triggers reached with a real HTTP client (http.md H1–H3, §2–§6, §9, §15).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { RawClient, httpRequest, startEngine, uniq, waitFor, waitForRoute, sleep } from '../harness.mjs';
import { Recorder, Workers, plain, ready } from '../common.mjs';

const BODY_LIMIT = 1024 * 1024;

export function httpSuite(a) {
  describe(`http triggers with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let w;
    const p = uniq('h');
    const base = () => `${engine.httpUrl}/${p}`;
    const seen = {
      users: new Recorder(),
      items: new Recorder(),
      cond: new Recorder(),
      condInputs: new Recorder(),
      condPost: new Recorder(),
    };

    const route = (function_id, api_path, http_method, extra = {}) =>
      w.registerTrigger({ type: 'http', function_id, config: { api_path: `/${p}${api_path}`, http_method, ...extra } });

    before(async () => {
      engine = await startEngine({ extraArgs: ['--http-body-limit', String(BODY_LIMIT)] });
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      w = workers.connect(engine.workerUrl);

      a.fn(w, `${p}::users`, async (req) => {
        seen.users.push(plain(req));
        return { id: req.path_params.id };
      });
      a.fn(w, `${p}::items`, async (req) => {
        seen.items.push(plain(req));
        return { title: req.title, method: req.method, body: req.body };
      });
      a.fn(w, `${p}::envelope`, async () => ({ status_code: 201, body: { a: 1 }, headers: { 'X-A': '1' } }));
      a.fn(w, `${p}::array`, async () => [1, 2]);
      a.fn(w, `${p}::string`, async () => 'x');
      a.fn(w, `${p}::post-like`, async () => ({ title: 't', body: 'b' }));
      a.fn(w, `${p}::body-only`, async () => ({ body: { a: 1 } }));
      a.fn(w, `${p}::todo-headers`, async () => ({ id: 'todo-1', headers: 'not an envelope' }));
      a.fn(w, `${p}::null`, async () => null);
      a.fn(w, `${p}::undefined`, async () => undefined);
      a.fn(w, `${p}::text`, async () => ({ status_code: 200, body: 'hi', headers: { 'Content-Type': 'text/plain' } }));
      a.fn(w, `${p}::throws`, async () => {
        throw new Error('boom');
      });
      a.fn(w, `${p}::lower`, async (req) => ({ method: req.method }));
      a.fn(w, `${p}::cond-check`, async (req) => {
        seen.condInputs.push(plain(req));
        const c = req.query_params?.c;
        if (c === 'false') return false;
        if (c === 'true') return true;
        if (c === 'null') return null;
        if (c === 'zero') return 0;
        return undefined;
      });
      a.fn(w, `${p}::cond-handler`, async (req) => {
        seen.cond.push(req.query_params?.c ?? '(none)');
        return { ran: true };
      });
      a.fn(w, `${p}::cond-post-check`, async (req) => req.allow);
      a.fn(w, `${p}::cond-post-handler`, async (req) => {
        seen.condPost.push(req.allow);
        return { ran: req.allow };
      });

      route(`${p}::users`, '/users/:id', 'GET');
      route(`${p}::items`, '/items', 'POST');
      route(`${p}::envelope`, '/envelope', 'GET');
      route(`${p}::array`, '/array', 'GET');
      route(`${p}::string`, '/string', 'GET');
      route(`${p}::post-like`, '/post-like', 'GET');
      route(`${p}::body-only`, '/body-only', 'GET');
      route(`${p}::todo-headers`, '/todo-headers', 'GET');
      route(`${p}::null`, '/null', 'GET');
      route(`${p}::undefined`, '/undefined', 'GET');
      route(`${p}::text`, '/text', 'GET');
      route(`${p}::throws`, '/throws', 'GET');
      route(`${p}::never-registered`, '/missing', 'GET');
      route(`${p}::lower`, '/lower', 'post');
      route(`${p}::cond-handler`, '/cond', 'GET', { condition_function_id: `${p}::cond-check` });
      route(`${p}::cond-post-handler`, '/cond-post', 'POST', { condition_function_id: `${p}::cond-post-check` });
      await ready(a, w, raw);
      await waitForRoute(`${engine.httpUrl}/${p}/envelope`, { want: (r) => r.status === 201 });
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('GET with path param and query: request object shape (§4.1, §15.1, §15.15, §15.16)', async () => {
      const res = await httpRequest(`${base()}/users/42?x=1&x=2&q=a+b%21&flag`, { headers: { 'X-Custom': 'v' } });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json, { id: '42' });
      assert.match(res.headers.get('content-type') ?? '', /application\/json/);
      const req = seen.users.calls.at(-1);
      assert.deepEqual(req.path_params, { id: '42' });
      assert.equal(req.query_params.x, '2', 'repeated query key: last value wins');
      assert.equal(req.query_params.q, 'a b!', 'query percent-decoded, + is space');
      assert.equal(req.query_params.flag, '');
      assert.equal(req.path, `/${p}/users/:id`, 'path is the route template');
      assert.equal(req.method, 'GET');
      assert.equal(req.body, null);
      assert.deepEqual(req.trigger, { type: 'http', path: `/${p}/users/:id`, method: 'GET' });
      assert.equal(req.headers['x-custom'], 'v');
      assert.equal(req._caller_worker_id, undefined);
    });

    test('request object carries request_body (read) and response (write) channel refs (§4.1, §15.1)', async () => {
      const res = await httpRequest(`${base()}/users/7`);
      assert.equal(res.status, 200, res.text);
      const req = seen.users.calls.at(-1);
      assert.equal(req.request_body, 'ChannelReader', 'the SDK resolved request_body into a ChannelReader');
      assert.equal(req.response, 'ChannelWriter', 'the SDK resolved response into a ChannelWriter');
    });

    test('path params are not percent-decoded (§4.1, §15.15)', async () => {
      const res = await httpRequest(`${base()}/users/a%20b`);
      assert.equal(res.status, 200);
      assert.deepEqual(res.json, { id: 'a%20b' });
    });

    test('POST JSON: body kept and its fields hoisted to the top level (H3, §15.14, §15.29)', async () => {
      const res = await httpRequest(`${base()}/items`, {
        method: 'POST',
        json: { title: 'buy milk', method: 'x', query_params: 'nope', extra: { n: 1 } },
      });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json, {
        title: 'buy milk',
        method: 'POST',
        body: { title: 'buy milk', method: 'x', query_params: 'nope', extra: { n: 1 } },
      });
      const req = seen.items.calls.at(-1);
      assert.equal(req.title, 'buy milk');
      assert.deepEqual(req.extra, { n: 1 });
      assert.equal(req.method, 'POST', 'request fields win over body keys');
      assert.deepEqual(req.query_params, {}, 'request fields win over body keys');
      assert.equal(req.body.method, 'x', 'body itself unchanged');
    });

    test('POST with a JSON array body: not hoisted', async () => {
      const res = await httpRequest(`${base()}/items`, { method: 'POST', json: [{ title: 'no' }] });
      assert.equal(res.status, 200, res.text);
      const req = seen.items.calls.at(-1);
      assert.deepEqual(req.body, [{ title: 'no' }]);
      assert.equal(req.title, undefined);
      assert.equal(req[0], undefined);
    });

    test('POST non-JSON content type: body null (§4.3)', async () => {
      const res = await httpRequest(`${base()}/items`, {
        method: 'POST',
        body: 'title=plain',
        headers: { 'content-type': 'text/plain' },
      });
      assert.equal(res.status, 200, res.text);
      assert.equal(seen.items.calls.at(-1).body, null);
      assert.equal(seen.items.calls.at(-1).title, undefined);
    });

    test('malformed JSON body with application/json answers 400 INVALID_JSON', async () => {
      const before = seen.items.count;
      const res = await httpRequest(`${base()}/items`, {
        method: 'POST',
        body: '{"title": "unterminated',
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(res.status, 400, res.text);
      assert.equal(res.json?.code, 'INVALID_JSON');
      assert.equal(typeof res.json?.error, 'string');
      assert.equal(seen.items.count, before, 'handler not invoked');
    });

    test('body over the limit answers 413; a body under it is served', async () => {
      const under = await httpRequest(`${base()}/items`, { method: 'POST', json: { title: 'u'.repeat(BODY_LIMIT / 2) } });
      assert.equal(under.status, 200, `under the limit: ${under.status}`);
      assert.equal(under.json?.title?.length, BODY_LIMIT / 2);
      const before = seen.items.count;
      const big = JSON.stringify({ blob: 'y'.repeat(2 * BODY_LIMIT) });
      const res = await httpRequest(`${base()}/items`, {
        method: 'POST',
        body: big,
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(res.status, 413, `status ${res.status}`);
      assert.equal(seen.items.count, before, 'handler not invoked');
    });

    test('envelope return maps status, body and headers (§6, §15.3)', async () => {
      const res = await httpRequest(`${base()}/envelope`);
      assert.equal(res.status, 201);
      assert.deepEqual(res.json, { a: 1 });
      assert.equal(res.headers.get('x-a'), '1');
      assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    });

    test('envelope with text/plain content-type sends the string unquoted (§15.6)', async () => {
      const res = await httpRequest(`${base()}/text`);
      assert.equal(res.status, 200);
      assert.equal(res.text, 'hi');
      assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    });

    test('plain return values are the response body (H1, §15.4)', async () => {
      const cases = [
        ['/array', [1, 2]],
        ['/string', 'x'],
        ['/post-like', { title: 't', body: 'b' }],
        ['/body-only', { a: 1 }],
        ['/todo-headers', { id: 'todo-1', headers: 'not an envelope' }],
      ];
      for (const [path, expected] of cases) {
        const res = await httpRequest(`${base()}${path}`);
        assert.equal(res.status, 200, `${path}: ${res.status} ${res.text}`);
        assert.deepEqual(res.json, expected, `${path} body`);
        assert.match(res.headers.get('content-type') ?? '', /application\/json/, `${path} content-type`);
      }
    });

    test('null or undefined return answers 200 null promptly (H2, §15.5)', async () => {
      for (const path of ['/null', '/undefined']) {
        const res = await httpRequest(`${base()}${path}`);
        assert.equal(res.status, 200, `${path}: ${res.status} ${res.text}`);
        assert.equal(res.text.trim(), 'null');
        assert.ok(res.ms < 1500, `${path} took ${res.ms} ms`);
      }
    });

    test('handler exception answers 500 with the flat error envelope (§9, §15.9)', async () => {
      const res = await httpRequest(`${base()}/throws`);
      assert.equal(res.status, 500);
      assert.equal(res.json?.error, 'boom');
      assert.equal(res.json?.code, 'invocation_failed');
      assert.equal(typeof res.json?.error_id, 'string');
      assert.ok(res.json.error_id.length > 0);
      assert.equal(res.json.stacktrace, undefined, 'stacktrace is not leaked');
    });

    test('route whose function is not registered answers 503 function_not_found', async () => {
      const res = await httpRequest(`${base()}/missing`);
      assert.equal(res.status, 503, `status ${res.status} ${res.text}`);
      assert.equal(res.json?.code, 'function_not_found');
      assert.equal(typeof res.json?.error, 'string');
    });

    test('unknown route answers 404 NOT_FOUND (§9, §15.10)', async () => {
      const res = await httpRequest(`${base()}/nope`);
      assert.equal(res.status, 404);
      assert.deepEqual(res.json, { error: 'Not Found', code: 'NOT_FOUND' });
      const trailing = await httpRequest(`${base()}/envelope/`);
      assert.equal(trailing.status, 404, 'trailing slash is a different route (§2.2)');
    });

    test('wrong method answers 405 with Allow (§3, §15.11)', async () => {
      const res = await httpRequest(`${base()}/envelope`, { method: 'POST', json: {} });
      assert.equal(res.status, 405);
      const allow = res.headers.get('allow') ?? '';
      assert.match(allow, /GET/, `Allow: ${allow}`);
    });

    test('lower-case http_method is served upper-case (§2.1, §15.2)', async () => {
      const res = await httpRequest(`${base()}/lower`, { method: 'POST', json: {} });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json, { method: 'POST' });
    });

    test('condition: false skips with 422; true, null, 0 and nothing run the handler (§5, §6, §15.12)', async () => {
      const before = seen.cond.count;
      const skipped = await httpRequest(`${base()}/cond?c=false`);
      assert.equal(skipped.status, 422, skipped.text);
      assert.equal(skipped.json?.code, 'CONDITION_NOT_MET');
      assert.equal(skipped.json?.skipped, true);
      assert.equal(typeof skipped.json?.error, 'string');
      assert.equal(seen.cond.count, before, 'handler must not run when the condition is false');

      for (const c of ['true', 'null', 'zero', undefined]) {
        const url = c === undefined ? `${base()}/cond` : `${base()}/cond?c=${c}`;
        const res = await httpRequest(url);
        assert.equal(res.status, 200, `c=${c}: ${res.status} ${res.text}`);
        assert.deepEqual(res.json, { ran: true });
      }
      assert.deepEqual(seen.cond.calls.slice(before), ['true', 'null', 'zero', '(none)']);
      const condInput = seen.condInputs.calls.at(-1);
      assert.equal(condInput.path, `/${p}/cond`);
      assert.equal(condInput.method, 'GET');
      assert.equal(condInput.request_body, undefined, 'condition input has no request_body (§4.2)');
      assert.equal(condInput.response, undefined, 'condition input has no response (§4.2)');
    });

    test('condition sees hoisted body fields (H3, §4.2)', async () => {
      const no = await httpRequest(`${base()}/cond-post`, { method: 'POST', json: { allow: false } });
      assert.equal(no.status, 422, no.text);
      assert.equal(no.json?.code, 'CONDITION_NOT_MET');
      const yes = await httpRequest(`${base()}/cond-post`, { method: 'POST', json: { allow: true } });
      assert.equal(yes.status, 200, yes.text);
      assert.deepEqual(yes.json, { ran: true });
      assert.deepEqual(seen.condPost.calls, [true]);
    });

    test('worker disconnect removes its routes (§2.3, §15.22)', async () => {
      const q = uniq('gone');
      const w2 = workers.connect(engine.workerUrl);
      a.fn(w2, `${q}::fn`, async () => 'here');
      w2.registerTrigger({ type: 'http', function_id: `${q}::fn`, config: { api_path: `/${q}`, http_method: 'GET' } });
      await ready(a, w2, raw);
      await waitForRoute(`${engine.httpUrl}/${q}`, { want: (r) => r.status === 200 });
      await workers.shutdown(w2);
      await waitFor(async () => (await httpRequest(`${engine.httpUrl}/${q}`)).status === 404, 3000, {
        message: 'route answers 404 after its worker left',
      });
      await sleep(50);
    });
  });
}
