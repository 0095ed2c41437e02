// A worker written for the iii engine runs against Trine unchanged.
import { registerWorker, Logger } from 'iii-sdk'

const iii = registerWorker(process.env.III_ENGINE_URL || 'ws://localhost:49134', {
  workerName: 'hello',
})

iii.registerFunction({ id: 'hello::greet' }, async (req) => {
  const logger = new Logger()
  const name = req.name || req.query_params?.name || 'world'
  logger.info('greeting', { name })
  return { message: `hello, ${name}` }
})

iii.registerTrigger({
  type: 'http',
  function_id: 'hello::greet',
  config: { api_path: '/hello', http_method: 'GET' },
})
iii.registerTrigger({
  type: 'http',
  function_id: 'hello::greet',
  config: { api_path: '/hello', http_method: 'POST' },
})

console.log('hello worker connected; try: curl "http://127.0.0.1:3111/hello?name=ada"')
