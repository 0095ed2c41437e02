// The seed's reactive backend: a live todo list (npm iii-sdk 0.9.0, the seed's own API).
//
// HTTP routes write todos into the `todos` state scope. Two state triggers react to every change
// of that scope on their own: one pushes a `todo_changed` event to the `todos-live` stream (browsers
// subscribe at ws://<host>:3112/stream/todos-live/all), the other keeps aggregate counters in the
// `todo-metrics` scope (GET /todos/metrics). Runs against `trine serve` unchanged.
import { registerWorker, Logger, TriggerAction } from 'iii-sdk'

const engineUrl = process.env.III_URL || process.env.III_ENGINE_URL || 'ws://localhost:49134'
const iii = registerWorker(engineUrl, { workerName: 'reactive-backend' })

// --- CRUD: HTTP handlers; state is the database ------------------------------------------------

// POST /todos {title}
iii.registerFunction({ id: 'todos::create' }, async (req) => {
  const id = `todo-${Date.now()}`
  const todo = { _key: id, id, title: req.title, completed: false, created_at: new Date().toISOString() }
  await iii.trigger({ function_id: 'state::set', payload: { scope: 'todos', key: id, value: todo } })
  return todo
})

// POST /todos/toggle {id}
iii.registerFunction({ id: 'todos::toggle' }, async (req) => {
  const current = await iii.trigger({ function_id: 'state::get', payload: { scope: 'todos', key: req.id } })
  if (!current) throw new Error(`Todo ${req.id} not found`)
  const completed = !current.completed
  await iii.trigger({
    function_id: 'state::update',
    payload: {
      scope: 'todos',
      key: req.id,
      ops: [
        { type: 'set', path: 'completed', value: completed },
        { type: 'set', path: 'updated_at', value: new Date().toISOString() },
      ],
    },
  })
  return { id: req.id, completed }
})

// GET /todos
iii.registerFunction({ id: 'todos::list' }, async () =>
  iii.trigger({ function_id: 'state::list', payload: { scope: 'todos' } }),
)

// POST /todos/delete {id}
iii.registerFunction({ id: 'todos::delete' }, async (req) => {
  await iii.trigger({ function_id: 'state::delete', payload: { scope: 'todos', key: req.id } })
  return { deleted: req.id }
})

iii.registerTrigger({ type: 'http', function_id: 'todos::create', config: { api_path: '/todos', http_method: 'POST' } })
iii.registerTrigger({ type: 'http', function_id: 'todos::list', config: { api_path: '/todos', http_method: 'GET' } })
iii.registerTrigger({
  type: 'http',
  function_id: 'todos::toggle',
  config: { api_path: '/todos/toggle', http_method: 'POST' },
})
iii.registerTrigger({
  type: 'http',
  function_id: 'todos::delete',
  config: { api_path: '/todos/delete', http_method: 'POST' },
})

// --- Reaction 1: broadcast every change of `todos` to stream clients ---------------------------

iii.registerFunction({ id: 'todos::on-change' }, async (event) => {
  const { new_value, old_value, key } = event
  const logger = new Logger()
  let action = 'updated'
  if (!old_value) action = 'created'
  else if (!new_value) action = 'deleted'
  logger.info('Todo changed', { key, action })

  // Fire and forget: nothing comes back from a void call, the stream clients see the event.
  iii.trigger({
    function_id: 'stream::send',
    payload: {
      stream_name: 'todos-live',
      group_id: 'all',
      id: `change-${Date.now()}`,
      event_type: 'todo_changed',
      data: { action, key, todo: new_value },
    },
    action: TriggerAction.Void(),
  })
  return { action, key }
})
iii.registerTrigger({ type: 'state', function_id: 'todos::on-change', config: { scope: 'todos' } })

// --- Reaction 2: aggregate counters in `todo-metrics` -----------------------------------------

iii.registerFunction({ id: 'todos::update-metrics' }, async (event) => {
  const { new_value, old_value } = event
  const ops = []
  if (new_value && !old_value) {
    ops.push({ type: 'increment', path: 'total', by: 1 })
  } else if (old_value && !new_value) {
    ops.push({ type: 'increment', path: 'total', by: -1 })
    if (old_value.completed) ops.push({ type: 'increment', path: 'completed', by: -1 })
  } else if (new_value && old_value && new_value.completed !== old_value.completed) {
    ops.push({ type: 'increment', path: 'completed', by: new_value.completed ? 1 : -1 })
  }
  if (ops.length > 0) {
    await iii.trigger({ function_id: 'state::update', payload: { scope: 'todo-metrics', key: 'global', ops } })
  }
})
iii.registerTrigger({ type: 'state', function_id: 'todos::update-metrics', config: { scope: 'todos' } })

// GET /todos/metrics: null until the first todo exists, then {total, completed?}
iii.registerFunction({ id: 'todos::get-metrics' }, async () =>
  iii.trigger({ function_id: 'state::get', payload: { scope: 'todo-metrics', key: 'global' } }),
)
iii.registerTrigger({
  type: 'http',
  function_id: 'todos::get-metrics',
  config: { api_path: '/todos/metrics', http_method: 'GET' },
})

console.log(`reactive-backend: connecting to ${engineUrl}`)
