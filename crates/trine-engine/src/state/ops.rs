//! Update operations shared by `state::update` and `stream::update` (state.md §4).
//!
//! This module is pure: [`decode_ops`] turns the wire `ops` array into [`UpdateOp`]s (a malformed op
//! rejects the whole call), and [`apply_ops`] applies them best-effort to a value, recording at most
//! one [`OpError`] per failing op and skipping it.
//!
//! Trine choices (deliberate divergences from the reference, see state.md §9/§10):
//! - An absent or `null` `path` addresses the root for every op (seed requirement T1).
//! - `by` may be any finite JSON number. Two integers are combined with checked integer arithmetic;
//!   as soon as either side is a float the arithmetic is `f64`. A non-finite `f64` result is an error.
//! - Integers: serde_json represents integers in `[i64::MIN, u64::MAX]` (u64 values above
//!   `i64::MAX` are kept as exact unsigned integers). Integer arithmetic is done exactly (in `i128`)
//!   and succeeds when the result fits in that range, so `i64::MAX + 1` yields the JSON integer
//!   `9223372036854775808` (as the reference does via its u64 retry). A result outside the range is
//!   reported as `increment.overflow` / `decrement.overflow` (the reference says `*.not_number`)
//!   and the value is left unchanged. We never silently fall back to a lossy float.
//! - Hostile nesting: the merge-value depth is measured iteratively, and a merge value deeper than
//!   the limit is never deep-cloned (only its top-level keys are kept, which is all the remaining
//!   checks need), so even a value nested far beyond serde_json's parse limit of 128 yields
//!   `merge.value.too_deep` instead of overflowing the stack. `set`/`append` values are cloned
//!   normally: they come from parsed JSON and are therefore at most 128 levels deep.
//! - `remove` preserves the order of the remaining keys (shift-remove, not swap-remove).

use serde_json::map::Entry;
use serde_json::{json, Map, Number, Value};

/// Maximum number of segments of an array path (`merge`/`append`).
pub const MAX_PATH_SEGMENTS: usize = 32;
/// Maximum length of one path segment, in UTF-8 bytes.
pub const MAX_SEGMENT_BYTES: usize = 256;
/// Maximum number of top-level keys of a `merge` value.
pub const MAX_MERGE_KEYS: usize = 1024;
/// Maximum nesting depth of a `merge` value (every object or array is one level).
pub const MAX_MERGE_DEPTH: usize = 16;
/// Constant `doc_url` of every per-op error.
pub const ERROR_DOC_URL: &str = "https://iii.dev/docs/workers/iii-state#error-codes";

/// Path segments / top-level merge keys rejected as JavaScript prototype-pollution sinks.
const FORBIDDEN_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

const OP_TYPES: &str = "`set`, `merge`, `increment`, `decrement`, `append`, `remove`";

/// A decoded update op.
///
/// Single-field ops (`set`, `increment`, `decrement`, `remove`) carry `key`: `None` (or
/// `Some("")`) is the root, anything else is ONE literal top-level key (dots are not separators).
/// `merge`/`append` carry `path`: literal segments, empty = root (`""`, `[]`, `null` and an absent
/// path all decode to the empty list; empty segments from an array path are kept so validation
/// can reject them).
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOp {
    Set {
        key: Option<String>,
        value: Value,
    },
    Merge {
        path: Vec<String>,
        value: MergeValue,
    },
    Increment {
        key: Option<String>,
        by: Number,
    },
    Decrement {
        key: Option<String>,
        by: Number,
    },
    Append {
        path: Vec<String>,
        value: Value,
    },
    Remove {
        key: Option<String>,
    },
}

impl UpdateOp {
    /// The op's wire `type` name (also the prefix of its error codes).
    pub fn type_name(&self) -> &'static str {
        match self {
            UpdateOp::Set { .. } => "set",
            UpdateOp::Merge { .. } => "merge",
            UpdateOp::Increment { .. } => "increment",
            UpdateOp::Decrement { .. } => "decrement",
            UpdateOp::Append { .. } => "append",
            UpdateOp::Remove { .. } => "remove",
        }
    }
}

/// The value of a `merge` op together with its precomputed nesting depth.
///
/// A value deeper than [`MAX_MERGE_DEPTH`] is replaced by a shallow stand-in with the same JSON
/// type and the same top-level keys (children set to `null`): it will be rejected anyway, and the
/// checks that run before the depth check only look at the top level.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeValue {
    value: Value,
    depth: usize,
}

impl MergeValue {
    /// Takes ownership of `value`. A too-deep value is dismantled iteratively (no recursive drop).
    pub fn new(value: Value) -> Self {
        let depth = nesting_depth(&value);
        if depth <= MAX_MERGE_DEPTH {
            return MergeValue { value, depth };
        }
        let stand_in = shallow_stand_in(&value);
        drop_iteratively(value);
        MergeValue {
            value: stand_in,
            depth,
        }
    }

    /// Like [`MergeValue::new`] but from a borrowed value; never deep-clones a too-deep value.
    pub fn from_ref(value: &Value) -> Self {
        let depth = nesting_depth(value);
        let value = if depth <= MAX_MERGE_DEPTH {
            value.clone()
        } else {
            shallow_stand_in(value)
        };
        MergeValue { value, depth }
    }

    /// Nesting depth of the original value (`{"a":1}` is 1, a scalar is 0).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Runs the §4.2 value checks in order (not-object, key count, proto keys, depth) and returns
    /// the object to merge.
    fn validated(&self) -> Result<&Map<String, Value>, Failure> {
        let map = match &self.value {
            Value::Object(map) => map,
            other => {
                return Err(Failure::new(
                    "merge.value.not_an_object",
                    format!(
                        "Merge value must be a JSON object, got {}",
                        json_type(other)
                    ),
                ))
            }
        };
        if map.len() > MAX_MERGE_KEYS {
            return Err(Failure::new(
                "merge.value.too_many_keys",
                format!(
                    "Merge value has {} top-level keys, exceeds maximum of {}",
                    map.len(),
                    MAX_MERGE_KEYS
                ),
            ));
        }
        if let Some(key) = map.keys().find(|k| is_forbidden(k)) {
            return Err(Failure::new(
                "merge.value.proto_polluted",
                format!("Merge value top-level key '{key}' is not allowed (prototype pollution)"),
            ));
        }
        if self.depth > MAX_MERGE_DEPTH {
            return Err(Failure::new(
                "merge.value.too_deep",
                format!(
                    "Merge value nesting depth {} exceeds maximum of {}",
                    self.depth, MAX_MERGE_DEPTH
                ),
            ));
        }
        Ok(map)
    }
}

/// Per-op error (state.md §4.4).
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub op_index: usize,
    pub code: String,
    pub message: String,
}

impl OpError {
    /// `{"op_index","code","message","doc_url"}` in that order.
    pub fn to_json(&self) -> Value {
        json!({
            "op_index": self.op_index,
            "code": self.code,
            "message": self.message,
            "doc_url": ERROR_DOC_URL,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes the `ops` field of a `state::update` / `stream::update` payload.
///
/// `Err(message)` means the whole call fails with `deserialization_error`; the message names the
/// offending op (`ops[2]: ...`).
pub fn decode_ops(ops: &Value) -> Result<Vec<UpdateOp>, String> {
    let items = match ops {
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "invalid type for `ops`: expected an array of update operations, got {}",
                json_type(other)
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(index, op)| decode_op(op).map_err(|e| format!("ops[{index}]: {e}")))
        .collect()
}

fn decode_op(op: &Value) -> Result<UpdateOp, String> {
    let obj = match op {
        Value::Object(obj) => obj,
        other => {
            return Err(format!(
                "invalid type: expected an update operation object, got {}",
                json_type(other)
            ))
        }
    };
    let op_type = match obj.get("type") {
        None => return Err("missing field `type`".to_string()),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(format!(
                "invalid type for `type`: expected a string, got {}",
                json_type(other)
            ))
        }
    };
    match op_type {
        "set" => Ok(UpdateOp::Set {
            key: decode_key(obj)?,
            value: obj.get("value").cloned().unwrap_or(Value::Null),
        }),
        "merge" => Ok(UpdateOp::Merge {
            path: decode_path(obj)?,
            value: MergeValue::from_ref(required_value(obj)?),
        }),
        "increment" => Ok(UpdateOp::Increment {
            key: decode_key(obj)?,
            by: decode_by(obj)?,
        }),
        "decrement" => Ok(UpdateOp::Decrement {
            key: decode_key(obj)?,
            by: decode_by(obj)?,
        }),
        "append" => Ok(UpdateOp::Append {
            path: decode_path(obj)?,
            value: required_value(obj)?.clone(),
        }),
        "remove" => Ok(UpdateOp::Remove {
            key: decode_key(obj)?,
        }),
        other => Err(format!(
            "unknown variant `{other}`, expected one of {OP_TYPES}"
        )),
    }
}

/// Single-string path: string, `null` or absent (T1). `""`, `null` and absent are all the root.
fn decode_key(obj: &Map<String, Value>) -> Result<Option<String>, String> {
    match obj.get("path") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "invalid type for `path`: expected a string or null, got {}",
            json_type(other)
        )),
    }
}

/// `MergePath`: string, array of strings, `null` or absent.
fn decode_path(obj: &Map<String, Value>) -> Result<Vec<String>, String> {
    match obj.get("path") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "invalid type for `path[{i}]`: expected a string, got {}",
                    json_type(other)
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "invalid type for `path`: expected a string, an array of strings or null, got {}",
            json_type(other)
        )),
    }
}

fn decode_by(obj: &Map<String, Value>) -> Result<Number, String> {
    match obj.get("by") {
        None => Err("missing field `by`".to_string()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => Ok(n.clone()),
        Some(other) => Err(format!(
            "invalid type for `by`: expected a finite number, got {}",
            json_type(other)
        )),
    }
}

fn required_value(obj: &Map<String, Value>) -> Result<&Value, String> {
    obj.get("value")
        .ok_or_else(|| "missing field `value`".to_string())
}

// ---------------------------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------------------------

/// Applies `ops` in order to `current` (`None` = the key is missing), best effort.
///
/// Evaluation starts from `{}` when the key is missing, with a *missing-default* flag that stays
/// set until the first op that succeeds. A failing op records one [`OpError`] and is skipped
/// (the value is left exactly as before that op); the other ops still apply.
pub fn apply_ops(current: Option<&Value>, ops: &[UpdateOp]) -> (Value, Vec<OpError>) {
    let mut doc = Doc {
        root: current
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
        missing_default: current.is_none(),
    };
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        match doc.apply(op) {
            Ok(Outcome::Applied) => doc.missing_default = false,
            Ok(Outcome::Ignored) => {}
            Err(failure) => errors.push(OpError {
                op_index,
                code: failure.code,
                message: failure.message,
            }),
        }
    }
    (doc.root, errors)
}

/// Error code + message of a failed op (the index is added by [`apply_ops`]).
struct Failure {
    code: String,
    message: String,
}

impl Failure {
    fn new(code: impl Into<String>, message: String) -> Self {
        Failure {
            code: code.into(),
            message,
        }
    }
}

enum Outcome {
    Applied,
    /// Root merge on a non-object root: no error, no change (state.md §4.3).
    Ignored,
}

struct Doc {
    root: Value,
    missing_default: bool,
}

impl Doc {
    fn apply(&mut self, op: &UpdateOp) -> Result<Outcome, Failure> {
        let name = op.type_name();
        match op {
            UpdateOp::Set { key, value } => {
                let key = root_or_key(key);
                validate_key(name, key)?;
                match key {
                    None => self.root = value.clone(),
                    Some(k) => {
                        self.object_root(name, &key_label(Some(k)))?
                            .insert(k.to_string(), value.clone());
                    }
                }
            }
            UpdateOp::Merge { path, value } => {
                validate_path(name, path)?;
                let entries = value.validated()?;
                let target = if path.is_empty() {
                    match &mut self.root {
                        Value::Object(map) => map,
                        _ => return Ok(Outcome::Ignored),
                    }
                } else {
                    walk_creating(&mut self.root, path)
                };
                for (k, v) in entries {
                    target.insert(k.clone(), v.clone());
                }
            }
            UpdateOp::Increment { key, by } => self.add(name, root_or_key(key), by, false)?,
            UpdateOp::Decrement { key, by } => self.add(name, root_or_key(key), by, true)?,
            UpdateOp::Append { path, value } => {
                validate_path(name, path)?;
                match path.as_slice() {
                    [] => {
                        if self.missing_default {
                            self.root = Value::Null;
                        }
                        append_into(&mut self.root, value, "root")?;
                    }
                    [leaf] => {
                        let label = segments_label(path);
                        let map = self.object_root(name, &label)?;
                        match map.get_mut(leaf) {
                            Some(existing) => append_into(existing, value, &label)?,
                            None => {
                                map.insert(leaf.clone(), initial_append(value));
                            }
                        }
                    }
                    [parents @ .., leaf] => {
                        let label = segments_label(path);
                        self.object_root(name, &label)?;
                        // A failure below needs an existing leaf, hence existing object parents:
                        // the walk only mutates when the op is bound to succeed.
                        let parent = walk_creating(&mut self.root, parents);
                        match parent.get_mut(leaf) {
                            Some(existing) => append_into(existing, value, &label)?,
                            None => {
                                // Missing nested leaf: always an array, even for strings.
                                parent.insert(leaf.clone(), Value::Array(vec![value.clone()]));
                            }
                        }
                    }
                }
            }
            UpdateOp::Remove { key } => {
                let key = root_or_key(key);
                validate_key(name, key)?;
                match key {
                    None => self.root = Value::Null,
                    Some(k) => {
                        self.object_root(name, &key_label(Some(k)))?.shift_remove(k);
                    }
                }
            }
        }
        Ok(Outcome::Applied)
    }

    /// The root as an object, or `<op>.target_not_object`.
    fn object_root(&mut self, op: &str, label: &str) -> Result<&mut Map<String, Value>, Failure> {
        match &mut self.root {
            Value::Object(map) => Ok(map),
            other => Err(Failure::new(
                format!("{op}.target_not_object"),
                format!(
                    "Cannot {op} at path '{label}': target is {}, expected object",
                    json_type(other)
                ),
            )),
        }
    }

    /// `increment` (`subtract == false`) and `decrement` (`subtract == true`).
    fn add(
        &mut self,
        op: &str,
        key: Option<&str>,
        by: &Number,
        subtract: bool,
    ) -> Result<(), Failure> {
        validate_key(op, key)?;
        let label = key_label(key);
        let missing_default = self.missing_default;
        let target = match key {
            None if missing_default => {
                self.root = Value::Number(initial_number(op, &label, by, subtract)?);
                return Ok(());
            }
            None => &mut self.root,
            Some(k) => match self.object_root(op, &label)?.entry(k) {
                Entry::Occupied(existing) => existing.into_mut(),
                Entry::Vacant(slot) => {
                    slot.insert(Value::Number(initial_number(op, &label, by, subtract)?));
                    return Ok(());
                }
            },
        };
        match target {
            Value::Number(n) => {
                *n = arithmetic(op, &label, n, by, subtract)?;
                Ok(())
            }
            other => Err(Failure::new(
                format!("{op}.not_number"),
                format!(
                    "Expected number at path '{label}', got {}",
                    json_type(other)
                ),
            )),
        }
    }
}

fn root_or_key(key: &Option<String>) -> Option<&str> {
    key.as_deref().filter(|k| !k.is_empty())
}

/// Path checks of a single-string path (one segment, or none for the root).
fn validate_key(op: &str, key: Option<&str>) -> Result<(), Failure> {
    match key {
        Some(k) => validate_path(op, &[k]),
        None => Ok(()),
    }
}

/// §4.2 path checks, first failure wins: depth, then per segment (empty, too long, proto).
fn validate_path<S: AsRef<str>>(op: &str, segments: &[S]) -> Result<(), Failure> {
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(Failure::new(
            format!("{op}.path.too_deep"),
            format!(
                "Path depth {} exceeds maximum of {}",
                segments.len(),
                MAX_PATH_SEGMENTS
            ),
        ));
    }
    for (i, segment) in segments.iter().enumerate() {
        let segment = segment.as_ref();
        if segment.is_empty() {
            return Err(Failure::new(
                format!("{op}.path.empty_segment"),
                format!("Path segment {i} is empty"),
            ));
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(Failure::new(
                format!("{op}.path.segment_too_long"),
                format!(
                    "Path segment {i} is {} bytes, exceeds maximum of {}",
                    segment.len(),
                    MAX_SEGMENT_BYTES
                ),
            ));
        }
        if is_forbidden(segment) {
            return Err(Failure::new(
                format!("{op}.path.proto_polluted"),
                format!("Path segment '{segment}' is not allowed (prototype pollution)"),
            ));
        }
    }
    Ok(())
}

fn is_forbidden(key: &str) -> bool {
    FORBIDDEN_KEYS.contains(&key)
}

/// Walks `segments` from `root`, destructively: a non-object root, or a missing or non-object
/// node on the way (including the target), is replaced by `{}`. Returns the target object.
fn walk_creating<'a>(root: &'a mut Value, segments: &[String]) -> &'a mut Map<String, Value> {
    let mut node = root;
    for segment in segments {
        node = force_object(node)
            .entry(segment.clone())
            .or_insert(Value::Null);
    }
    force_object(node)
}

fn force_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("replaced by an object above"),
    }
}

/// The append matrix for an existing target: array ⇒ push, string ⇒ concatenate a string,
/// null ⇒ initialise, anything else ⇒ `append.type_mismatch`.
fn append_into(target: &mut Value, value: &Value, label: &str) -> Result<(), Failure> {
    match target {
        Value::Array(items) => items.push(value.clone()),
        Value::String(s) => match value {
            Value::String(chunk) => s.push_str(chunk),
            other => {
                return Err(Failure::new(
                    "append.type_mismatch",
                    format!(
                        "Expected string append value at path '{label}', got {}",
                        json_type(other)
                    ),
                ))
            }
        },
        Value::Null => *target = initial_append(value),
        other => {
            return Err(Failure::new(
                "append.type_mismatch",
                format!(
                    "Cannot append at path '{label}': target is {}, expected array, string, null or missing",
                    json_type(other)
                ),
            ))
        }
    }
    Ok(())
}

/// Value of a fresh append target: a string stays a string, anything else is wrapped in an array.
fn initial_append(value: &Value) -> Value {
    match value {
        Value::String(_) => value.clone(),
        other => Value::Array(vec![other.clone()]),
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// A JSON number split into the exact integer case and the float case.
#[derive(Clone, Copy)]
enum Num {
    /// Any serde_json integer: `[i64::MIN, u64::MAX]`, held exactly.
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Num::Int(i128::from(u))
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            // Lossy above 2^53 by nature of mixing with a float.
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Back to a JSON number; `None` when out of the representable range (or not finite).
fn to_number(n: Num) -> Option<Number> {
    match n {
        Num::Int(i) => {
            if let Ok(v) = i64::try_from(i) {
                Some(Number::from(v))
            } else {
                u64::try_from(i).ok().map(Number::from)
            }
        }
        Num::Float(f) => Number::from_f64(f),
    }
}

fn overflow(op: &str, label: &str, detail: String) -> Failure {
    Failure::new(
        format!("{op}.overflow"),
        format!("Cannot {op} at path '{label}': {detail}"),
    )
}

fn range_detail(kind: Num) -> String {
    match kind {
        Num::Int(_) => format!(
            "result is outside the integer range [{}, {}]",
            i64::MIN,
            u64::MAX
        ),
        Num::Float(_) => "result is not a finite number".to_string(),
    }
}

/// Value of a missing target: `by` for increment, `-by` for decrement.
fn initial_number(op: &str, label: &str, by: &Number, subtract: bool) -> Result<Number, Failure> {
    if !subtract {
        return Ok(by.clone());
    }
    let negated = match Num::of(by) {
        Num::Int(i) => Num::Int(-i),
        Num::Float(f) => Num::Float(-f),
    };
    to_number(negated).ok_or_else(|| {
        overflow(
            op,
            label,
            format!("negating {by} {}", range_detail(negated)),
        )
    })
}

/// `current + by` or `current - by`: exact when both are integers, `f64` otherwise.
fn arithmetic(
    op: &str,
    label: &str,
    current: &Number,
    by: &Number,
    subtract: bool,
) -> Result<Number, Failure> {
    let result = match (Num::of(current), Num::of(by)) {
        // Both operands lie in [-2^63, 2^64), so the i128 sum/difference cannot overflow.
        (Num::Int(a), Num::Int(b)) => Num::Int(if subtract { a - b } else { a + b }),
        (a, b) => Num::Float(if subtract {
            a.as_f64() - b.as_f64()
        } else {
            a.as_f64() + b.as_f64()
        }),
    };
    to_number(result).ok_or_else(|| {
        overflow(
            op,
            label,
            format!(
                "{current} {} {by}: {}",
                if subtract { "-" } else { "+" },
                range_detail(result)
            ),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn key_label(key: Option<&str>) -> String {
    key.unwrap_or("root").to_string()
}

fn segments_label(segments: &[String]) -> String {
    match segments {
        [] => "root".to_string(),
        [single] => single.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Nesting depth without recursion: every object or array adds one level, scalars are 0.
fn nesting_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((node, above)) = stack.pop() {
        let level = above + 1;
        match node {
            Value::Array(items) => {
                max = max.max(level);
                stack.extend(items.iter().map(|child| (child, level)));
            }
            Value::Object(map) => {
                max = max.max(level);
                stack.extend(map.values().map(|child| (child, level)));
            }
            _ => {}
        }
    }
    max
}

/// Same JSON type and top-level keys, children replaced by `null`.
fn shallow_stand_in(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.keys().map(|k| (k.clone(), Value::Null)).collect()),
        Value::Array(_) => Value::Array(Vec::new()),
        scalar => scalar.clone(),
    }
}

/// Drops a value of any depth without recursion.
fn drop_iteratively(value: Value) {
    let mut stack = vec![value];
    while let Some(node) = stack.pop() {
        match node {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- helpers ------------------------------------------------------------------------------

    fn run(current: Option<Value>, ops: Value) -> (Value, Vec<OpError>) {
        let ops = decode_ops(&ops).expect("ops must decode");
        apply_ops(current.as_ref(), &ops)
    }

    /// Applies and asserts there is no error.
    fn ok(current: Option<Value>, ops: Value) -> Value {
        let (value, errors) = run(current, ops);
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        value
    }

    /// Applies and asserts exactly one error; returns (value, op_index, code).
    fn one_err(current: Option<Value>, ops: Value) -> (Value, usize, String) {
        let (value, errors) = run(current, ops);
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one error, got {errors:?}"
        );
        (value, errors[0].op_index, errors[0].code.clone())
    }

    /// Asserts a single op fails with `code` and leaves `current` unchanged.
    fn fails(current: Option<Value>, op: Value, code: &str) {
        let before = current.clone().unwrap_or_else(|| json!({}));
        let (value, index, got) = one_err(current, json!([op]));
        assert_eq!(got, code, "op {op}");
        assert_eq!(index, 0);
        assert_eq!(
            value, before,
            "a failing op must not change the value (op {op})"
        );
    }

    fn decode_err(ops: Value) -> String {
        match decode_ops(&ops) {
            Err(message) => message,
            Ok(decoded) => panic!("expected a decode error for {ops}, got {decoded:?}"),
        }
    }

    /// `{"a":{"a":…{"a":1}}}` with `depth` objects.
    fn nested_objects(depth: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!({ "a": v });
        }
        v
    }

    fn segments(n: usize) -> Value {
        Value::Array((0..n).map(|i| json!(format!("s{i}"))).collect())
    }

    fn object_with_keys(n: usize) -> Value {
        Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect())
    }

    fn compact(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    const SINGLE_OPS: [&str; 4] = ["set", "increment", "decrement", "remove"];

    /// A valid op of type `ty` with the given path.
    fn op_with_path(ty: &str, path: Value) -> Value {
        match ty {
            "set" => json!({"type": "set", "path": path, "value": 1}),
            "increment" | "decrement" => json!({"type": ty, "path": path, "by": 1}),
            "remove" => json!({"type": "remove", "path": path}),
            "merge" => json!({"type": "merge", "path": path, "value": {"x": 1}}),
            "append" => json!({"type": "append", "path": path, "value": 1}),
            _ => unreachable!(),
        }
    }

    // ---- decoding -----------------------------------------------------------------------------

    #[test]
    fn decode_rejects_non_array_ops() {
        for ops in [json!({}), json!(null), json!("set"), json!(1), json!(true)] {
            let msg = decode_err(ops);
            assert!(msg.contains("ops"), "{msg}");
        }
    }

    #[test]
    fn decode_accepts_empty_ops() {
        assert_eq!(decode_ops(&json!([])).unwrap(), vec![]);
    }

    #[test]
    fn decode_rejects_non_object_op() {
        for op in [
            json!(1),
            json!("set"),
            json!(null),
            json!([]),
            json!([{"type": "remove"}]),
        ] {
            decode_err(json!([op]));
        }
    }

    #[test]
    fn decode_rejects_missing_or_bad_type() {
        assert!(decode_err(json!([{"path": "a"}])).contains("`type`"));
        decode_err(json!([{"type": 1}]));
        decode_err(json!([{"type": null}]));
        decode_err(json!([{"type": ["set"]}]));
        let msg = decode_err(json!([{"type": "multiply", "path": "a", "by": 2}]));
        assert!(msg.contains("multiply"), "{msg}");
        // Case-sensitive.
        decode_err(json!([{"type": "Set", "path": "a", "value": 1}]));
        decode_err(json!([{"type": "INCREMENT", "by": 1}]));
    }

    #[test]
    fn decode_error_names_the_op_index_and_rejects_the_whole_call() {
        let msg = decode_err(json!([
            {"type": "set", "path": "a", "value": 1},
            {"type": "increment", "path": "n", "by": "1"}
        ]));
        assert!(msg.starts_with("ops[1]"), "{msg}");
    }

    #[test]
    fn decode_by_must_be_a_finite_number() {
        for ty in ["increment", "decrement"] {
            assert!(decode_err(json!([{"type": ty, "path": "n"}])).contains("`by`"));
            for by in [
                json!("1"),
                json!(null),
                json!(true),
                json!([1]),
                json!({"n": 1}),
            ] {
                let msg = decode_err(json!([{"type": ty, "path": "n", "by": by}]));
                assert!(msg.contains("`by`"), "{msg}");
            }
            for by in [
                json!(1),
                json!(-7),
                json!(0),
                json!(1.5),
                json!(-0.25),
                json!(u64::MAX),
                json!(i64::MIN),
            ] {
                let decoded = decode_ops(&json!([{"type": ty, "path": "n", "by": by}])).unwrap();
                assert_eq!(decoded.len(), 1);
            }
        }
    }

    #[test]
    fn decode_single_string_paths() {
        for ty in SINGLE_OPS {
            for bad in [
                json!(1),
                json!(true),
                json!(["a"]),
                json!({"a": 1}),
                json!([]),
            ] {
                let msg = decode_err(json!([op_with_path(ty, bad.clone())]));
                assert!(msg.contains("`path`"), "{ty} {bad}: {msg}");
            }
            for good in [json!("a"), json!(""), json!(null), json!("a.b")] {
                decode_ops(&json!([op_with_path(ty, good)])).unwrap();
            }
            // Absent path (T1).
            let mut op = op_with_path(ty, json!(null));
            op.as_object_mut().unwrap().remove("path");
            decode_ops(&json!([op])).unwrap();
        }
    }

    #[test]
    fn decode_merge_path_forms() {
        for ty in ["merge", "append"] {
            for bad in [
                json!(1),
                json!(false),
                json!({"a": 1}),
                json!(["a", 1]),
                json!([null]),
                json!([["a"]]),
            ] {
                let msg = decode_err(json!([op_with_path(ty, bad.clone())]));
                assert!(msg.contains("`path"), "{ty} {bad}: {msg}");
            }
            for good in [
                json!("a"),
                json!(""),
                json!(null),
                json!([]),
                json!(["a", "b"]),
                json!([""]),
            ] {
                decode_ops(&json!([op_with_path(ty, good)])).unwrap();
            }
            let mut op = op_with_path(ty, json!(null));
            op.as_object_mut().unwrap().remove("path");
            decode_ops(&json!([op])).unwrap();
        }
    }

    #[test]
    fn decode_normalises_paths() {
        let ops = decode_ops(&json!([
            {"type": "set", "path": "", "value": 1},
            {"type": "set", "value": 1},
            {"type": "set", "path": null, "value": 1},
            {"type": "set", "path": "k", "value": 1},
            {"type": "merge", "path": "", "value": {}},
            {"type": "merge", "path": [], "value": {}},
            {"type": "merge", "value": {}},
            {"type": "merge", "path": "a.b", "value": {}},
            {"type": "append", "path": ["a", ""], "value": 1},
        ]))
        .unwrap();
        let keys: Vec<Option<String>> = ops[..4]
            .iter()
            .map(|op| match op {
                UpdateOp::Set { key, .. } => key.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(keys, vec![None, None, None, Some("k".to_string())]);
        let paths: Vec<Vec<String>> = ops[4..]
            .iter()
            .map(|op| match op {
                UpdateOp::Merge { path, .. } | UpdateOp::Append { path, .. } => path.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            paths,
            vec![s(&[]), s(&[]), s(&[]), s(&["a.b"]), s(&["a", ""])]
        );
        assert_eq!(ops[0].type_name(), "set");
        assert_eq!(ops[8].type_name(), "append");
    }

    #[test]
    fn decode_value_requirements() {
        // merge/append: value required, explicit null is present.
        for ty in ["merge", "append"] {
            let msg = decode_err(json!([{"type": ty, "path": "a"}]));
            assert!(msg.contains("`value`"), "{msg}");
            decode_ops(&json!([{"type": ty, "path": "a", "value": null}])).unwrap();
        }
        // set: absent value means null.
        let ops = decode_ops(&json!([{"type": "set", "path": "a"}])).unwrap();
        assert_eq!(
            ops[0],
            UpdateOp::Set {
                key: Some("a".into()),
                value: Value::Null
            }
        );
        // remove needs nothing; extra fields are ignored.
        decode_ops(&json!([{"type": "remove", "extra": 1, "value": 5}])).unwrap();
        decode_ops(&json!([{"type": "increment", "by": 1, "value": "x", "foo": null}])).unwrap();
    }

    // ---- error object -------------------------------------------------------------------------

    #[test]
    fn op_error_json_shape_and_key_order() {
        let e = OpError {
            op_index: 3,
            code: "merge.path.too_deep".into(),
            message: "Path depth 33 exceeds maximum of 32".into(),
        };
        let j = e.to_json();
        assert_eq!(
            j,
            json!({
                "op_index": 3,
                "code": "merge.path.too_deep",
                "message": "Path depth 33 exceeds maximum of 32",
                "doc_url": "https://iii.dev/docs/workers/iii-state#error-codes"
            })
        );
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["op_index", "code", "message", "doc_url"]);
    }

    #[test]
    fn error_messages_carry_concrete_numbers() {
        let (_, errors) = run(
            None,
            json!([{"type": "merge", "path": segments(33), "value": {}}]),
        );
        assert_eq!(errors[0].message, "Path depth 33 exceeds maximum of 32");
        let (_, errors) = run(
            None,
            json!([{"type": "merge", "value": object_with_keys(1025)}]),
        );
        assert!(errors[0].message.contains("1025") && errors[0].message.contains("1024"));
        let (_, errors) = run(
            None,
            json!([{"type": "merge", "value": nested_objects(17)}]),
        );
        assert!(errors[0].message.contains("17") && errors[0].message.contains("16"));
        let (_, errors) = run(
            None,
            json!([{"type": "set", "path": "x".repeat(300), "value": 1}]),
        );
        assert!(errors[0].message.contains("300") && errors[0].message.contains("256"));
        let (_, errors) = run(
            Some(json!(5)),
            json!([{"type": "set", "path": "x", "value": 1}]),
        );
        assert!(
            errors[0].message.contains("number"),
            "{}",
            errors[0].message
        );
        let (_, errors) = run(
            Some(json!(5)),
            json!([{"type": "append", "path": ["a", "b"], "value": 1}]),
        );
        assert!(
            errors[0].message.contains("[a, b]"),
            "{}",
            errors[0].message
        );
    }

    // ---- set ----------------------------------------------------------------------------------

    #[test]
    fn set_root_replaces_value() {
        let cur = Some(json!({"a": 1}));
        assert_eq!(
            ok(
                cur.clone(),
                json!([{"type": "set", "path": "", "value": [1, 2]}])
            ),
            json!([1, 2])
        );
        assert_eq!(
            ok(
                cur.clone(),
                json!([{"type": "set", "path": "", "value": null}])
            ),
            json!(null)
        );
        assert_eq!(
            ok(cur.clone(), json!([{"type": "set", "path": ""}])),
            json!(null)
        );
        assert_eq!(
            ok(
                Some(json!(7)),
                json!([{"type": "set", "path": "", "value": "s"}])
            ),
            json!("s")
        );
        assert_eq!(
            ok(None, json!([{"type": "set", "path": "", "value": 3}])),
            json!(3)
        );
    }

    #[test]
    fn set_key_inserts_or_overwrites_in_place() {
        let cur = Some(json!({"a": 1, "b": 2}));
        let v = ok(
            cur.clone(),
            json!([{"type": "set", "path": "c", "value": {"x": 1}}]),
        );
        assert_eq!(compact(&v), r#"{"a":1,"b":2,"c":{"x":1}}"#);
        let v = ok(cur, json!([{"type": "set", "path": "a", "value": 9}]));
        assert_eq!(compact(&v), r#"{"a":9,"b":2}"#);
        assert_eq!(
            ok(None, json!([{"type": "set", "path": "k", "value": 1}])),
            json!({"k": 1})
        );
    }

    #[test]
    fn set_dotted_key_is_literal() {
        let v = ok(
            Some(json!({"user": {"name": "x"}})),
            json!([{"type": "set", "path": "user.name", "value": "y"}]),
        );
        assert_eq!(v, json!({"user": {"name": "x"}, "user.name": "y"}));
    }

    #[test]
    fn set_key_on_non_object_root_fails() {
        for root in [json!(5), json!(null), json!([1]), json!("s"), json!(true)] {
            fails(
                Some(root),
                json!({"type": "set", "path": "x", "value": 1}),
                "set.target_not_object",
            );
        }
    }

    // ---- merge --------------------------------------------------------------------------------

    #[test]
    fn merge_root_is_shallow() {
        let v = ok(
            Some(json!({"a": {"x": 1, "y": 2}, "b": 1})),
            json!([{"type": "merge", "value": {"a": {"x": 5}, "c": 3}}]),
        );
        assert_eq!(compact(&v), r#"{"a":{"x":5},"b":1,"c":3}"#);
    }

    #[test]
    fn merge_root_path_forms_are_equivalent() {
        for path in [json!(""), json!(null), json!([])] {
            let v = ok(
                Some(json!({"a": 1})),
                json!([{"type": "merge", "path": path, "value": {"b": 2}}]),
            );
            assert_eq!(v, json!({"a": 1, "b": 2}));
        }
        let v = ok(
            Some(json!({"a": 1})),
            json!([{"type": "merge", "value": {"b": 2}}]),
        );
        assert_eq!(v, json!({"a": 1, "b": 2}));
    }

    #[test]
    fn merge_root_on_non_object_is_silently_ignored() {
        for root in [json!(5), json!([1]), json!(null), json!("s"), json!(false)] {
            let (v, errors) = run(
                Some(root.clone()),
                json!([{"type": "merge", "value": {"a": 1}}]),
            );
            assert!(errors.is_empty());
            assert_eq!(v, root);
        }
    }

    #[test]
    fn merge_root_on_non_object_still_validates_the_value() {
        fails(
            Some(json!(5)),
            json!({"type": "merge", "value": [1]}),
            "merge.value.not_an_object",
        );
        fails(
            Some(json!(5)),
            json!({"type": "merge", "value": {"__proto__": 1}}),
            "merge.value.proto_polluted",
        );
    }

    #[test]
    fn merge_on_missing_key_creates_object() {
        assert_eq!(
            ok(None, json!([{"type": "merge", "value": {"a": 1}}])),
            json!({"a": 1})
        );
        assert_eq!(
            ok(
                None,
                json!([{"type": "merge", "path": ["x", "y"], "value": {"a": 1}}])
            ),
            json!({"x": {"y": {"a": 1}}})
        );
    }

    #[test]
    fn merge_nested_path_creates_and_merges() {
        let v = ok(
            Some(json!({"a": {"b": {"keep": true, "c": 0}}, "z": 1})),
            json!([{"type": "merge", "path": ["a", "b"], "value": {"c": 1, "d": 2}}]),
        );
        assert_eq!(
            compact(&v),
            r#"{"a":{"b":{"keep":true,"c":1,"d":2}},"z":1}"#
        );
        let v = ok(
            Some(json!({"a": 1})),
            json!([{"type": "merge", "path": "p", "value": {"c": 1}}]),
        );
        assert_eq!(v, json!({"a": 1, "p": {"c": 1}}));
        // A string path is ONE literal segment.
        let v = ok(
            Some(json!({})),
            json!([{"type": "merge", "path": "a.b", "value": {"c": 1}}]),
        );
        assert_eq!(v, json!({"a.b": {"c": 1}}));
    }

    #[test]
    fn merge_nested_is_destructive() {
        // §4.6 example 2.
        let v = ok(
            Some(json!({"a": 5})),
            json!([{"type": "merge", "path": ["a", "b"], "value": {"c": 1}}]),
        );
        assert_eq!(v, json!({"a": {"b": {"c": 1}}}));
        // Non-object target replaced.
        let v = ok(
            Some(json!({"a": [1, 2]})),
            json!([{"type": "merge", "path": "a", "value": {"c": 1}}]),
        );
        assert_eq!(v, json!({"a": {"c": 1}}));
        let v = ok(
            Some(json!({"a": null})),
            json!([{"type": "merge", "path": ["a"], "value": {"c": 1}}]),
        );
        assert_eq!(v, json!({"a": {"c": 1}}));
        // Non-object root replaced by {} for a non-empty path.
        for root in [json!(5), json!([1]), json!(null), json!("s")] {
            let v = ok(
                Some(root),
                json!([{"type": "merge", "path": ["a", "b"], "value": {"c": 1}}]),
            );
            assert_eq!(v, json!({"a": {"b": {"c": 1}}}));
        }
    }

    #[test]
    fn merge_value_must_be_object() {
        // Check 13.
        let (v, errors) = run(None, json!([{"type": "merge", "value": [1]}]));
        assert_eq!(v, json!({}));
        assert_eq!(
            errors[0].to_json(),
            json!({
                "op_index": 0,
                "code": "merge.value.not_an_object",
                "message": errors[0].message,
                "doc_url": "https://iii.dev/docs/workers/iii-state#error-codes"
            })
        );
        for value in [json!(null), json!(1), json!("s"), json!(true), json!([])] {
            fails(
                Some(json!({"a": 1})),
                json!({"type": "merge", "value": value}),
                "merge.value.not_an_object",
            );
        }
    }

    #[test]
    fn merge_value_key_count_boundary() {
        let v = ok(
            None,
            json!([{"type": "merge", "value": object_with_keys(1024)}]),
        );
        assert_eq!(v.as_object().unwrap().len(), 1024);
        fails(
            None,
            json!({"type": "merge", "value": object_with_keys(1025)}),
            "merge.value.too_many_keys",
        );
        fails(
            Some(json!({})),
            json!({"type": "merge", "path": ["a"], "value": object_with_keys(1025)}),
            "merge.value.too_many_keys",
        );
    }

    #[test]
    fn merge_value_proto_keys_top_level_only() {
        for key in FORBIDDEN_KEYS {
            let mut value = Map::new();
            value.insert("ok".into(), json!(1));
            value.insert(key.into(), json!(1));
            fails(
                Some(json!({})),
                json!({"type": "merge", "value": value}),
                "merge.value.proto_polluted",
            );
        }
        // Nested keys are not checked.
        let v = ok(
            None,
            json!([{"type": "merge", "value": {"a": {"__proto__": 1, "constructor": 2}}}]),
        );
        assert_eq!(v, json!({"a": {"__proto__": 1, "constructor": 2}}));
        // Near misses are fine.
        ok(
            None,
            json!([{"type": "merge", "value": {"__proto": 1, "Constructor": 2, "prototypes": 3}}]),
        );
    }

    #[test]
    fn merge_value_depth_boundary() {
        assert_eq!(MergeValue::from_ref(&json!({"a": 1})).depth(), 1);
        assert_eq!(MergeValue::from_ref(&json!({})).depth(), 1);
        assert_eq!(MergeValue::from_ref(&json!({"a": []})).depth(), 2);
        assert_eq!(
            MergeValue::from_ref(&json!({"a": [{"b": [1]}], "c": 1})).depth(),
            4
        );
        assert_eq!(MergeValue::from_ref(&json!(3)).depth(), 0);
        assert_eq!(MergeValue::from_ref(&nested_objects(16)).depth(), 16);

        let v = ok(
            None,
            json!([{"type": "merge", "value": nested_objects(16)}]),
        );
        assert_eq!(v, nested_objects(16));
        fails(
            None,
            json!({"type": "merge", "value": nested_objects(17)}),
            "merge.value.too_deep",
        );

        // Arrays count as levels: {"a": [[...15 arrays... [1]]]} = 1 + 15 = 16 ok, one more fails.
        let mut arr = json!(1);
        for _ in 0..15 {
            arr = json!([arr]);
        }
        ok(
            None,
            json!([{"type": "merge", "value": {"a": arr.clone()}}]),
        );
        fails(
            None,
            json!({"type": "merge", "value": {"a": [arr]}}),
            "merge.value.too_deep",
        );
        // An empty container at the bottom still counts.
        let mut deep_empty = json!({});
        for _ in 0..16 {
            deep_empty = json!({ "a": deep_empty });
        }
        fails(
            None,
            json!({"type": "merge", "value": deep_empty}),
            "merge.value.too_deep",
        );
    }

    /// `depth` nested arrays around `1`, built without recursion.
    fn deep_array(depth: usize) -> Value {
        let mut v = Value::from(1);
        for _ in 0..depth {
            v = Value::Array(vec![v]);
        }
        v
    }

    /// `[{"type":"merge","value": value}]` built by moving (the `json!` macro would serialize
    /// interpolated values recursively).
    fn merge_ops_moving(value: Value) -> Value {
        let mut op = Map::new();
        op.insert("type".into(), Value::from("merge"));
        op.insert("value".into(), value);
        Value::Array(vec![Value::Object(op)])
    }

    #[test]
    fn merge_hostile_nesting_does_not_overflow_the_stack() {
        let mut wrapper = Map::new();
        wrapper.insert("a".into(), deep_array(100_000));
        let ops = merge_ops_moving(Value::Object(wrapper));
        let decoded = decode_ops(&ops).unwrap();
        let (v, errors) = apply_ops(None, &decoded);
        assert_eq!(v, json!({}));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, "merge.value.too_deep");
        assert!(
            errors[0].message.contains("100001"),
            "{}",
            errors[0].message
        );

        // Owned construction of a too-deep value dismantles it without recursion.
        let Value::Array(mut items) = ops else {
            unreachable!()
        };
        let Value::Object(mut op) = items.pop().unwrap() else {
            unreachable!()
        };
        let merge = MergeValue::new(op.remove("value").unwrap());
        assert_eq!(merge.depth(), 100_001);
        let (_, errors) = apply_ops(
            Some(&json!({})),
            &[UpdateOp::Merge {
                path: vec![],
                value: merge,
            }],
        );
        assert_eq!(errors[0].code, "merge.value.too_deep");

        // A bare deep array is first of all not an object (check order).
        let ops = merge_ops_moving(deep_array(100_000));
        let (_, errors) = apply_ops(None, &decode_ops(&ops).unwrap());
        assert_eq!(errors[0].code, "merge.value.not_an_object");
        drop_iteratively(ops);
    }

    #[test]
    fn merge_path_depth_boundary() {
        let v = ok(
            None,
            json!([{"type": "merge", "path": segments(32), "value": {"x": 1}}]),
        );
        let mut node = &v;
        for i in 0..32 {
            node = &node[format!("s{i}")];
        }
        assert_eq!(node, &json!({"x": 1}));
        fails(
            None,
            json!({"type": "merge", "path": segments(33), "value": {"x": 1}}),
            "merge.path.too_deep",
        );
    }

    #[test]
    fn merge_path_segment_length_boundary() {
        let v = ok(
            None,
            json!([{"type": "merge", "path": ["a".repeat(256)], "value": {"x": 1}}]),
        );
        assert_eq!(v, json!({ "a".repeat(256): {"x": 1} }));
        fails(
            None,
            json!({"type": "merge", "path": ["a".repeat(257)], "value": {}}),
            "merge.path.segment_too_long",
        );
        fails(
            None,
            json!({"type": "merge", "path": "a".repeat(257), "value": {}}),
            "merge.path.segment_too_long",
        );
        // Bytes, not characters: 128 × 'é' = 256 bytes ok, 129 × 'é' = 258 bytes too long.
        ok(
            None,
            json!([{"type": "merge", "path": ["é".repeat(128)], "value": {}}]),
        );
        fails(
            None,
            json!({"type": "merge", "path": ["é".repeat(129)], "value": {}}),
            "merge.path.segment_too_long",
        );
    }

    #[test]
    fn merge_path_empty_and_proto_segments() {
        fails(
            None,
            json!({"type": "merge", "path": ["a", ""], "value": {}}),
            "merge.path.empty_segment",
        );
        fails(
            None,
            json!({"type": "merge", "path": [""], "value": {}}),
            "merge.path.empty_segment",
        );
        for bad in FORBIDDEN_KEYS {
            fails(
                None,
                json!({"type": "merge", "path": [bad], "value": {}}),
                "merge.path.proto_polluted",
            );
            fails(
                None,
                json!({"type": "merge", "path": ["a", bad, "b"], "value": {}}),
                "merge.path.proto_polluted",
            );
            fails(
                None,
                json!({"type": "merge", "path": bad, "value": {}}),
                "merge.path.proto_polluted",
            );
        }
    }

    #[test]
    fn merge_check_order_first_failure_wins() {
        // Path depth before segment checks.
        let mut path: Vec<Value> = vec![json!(""); 33];
        path[0] = json!("__proto__");
        fails(
            None,
            json!({"type": "merge", "path": path, "value": [1]}),
            "merge.path.too_deep",
        );
        // Per segment, in order: empty, too long, proto.
        fails(
            None,
            json!({"type": "merge", "path": ["", "__proto__"], "value": {}}),
            "merge.path.empty_segment",
        );
        fails(
            None,
            json!({"type": "merge", "path": ["x".repeat(300), ""], "value": {}}),
            "merge.path.segment_too_long",
        );
        fails(
            None,
            json!({"type": "merge", "path": ["__proto__", ""], "value": {}}),
            "merge.path.proto_polluted",
        );
        // Path before value.
        fails(
            None,
            json!({"type": "merge", "path": ["a", ""], "value": [1]}),
            "merge.path.empty_segment",
        );
        // Value: not-object, key count, proto keys, depth.
        let mut many = object_with_keys(1025);
        many.as_object_mut()
            .unwrap()
            .insert("__proto__".into(), nested_objects(20));
        fails(
            None,
            json!({"type": "merge", "value": many}),
            "merge.value.too_many_keys",
        );
        fails(
            None,
            json!({"type": "merge", "value": {"deep": nested_objects(20), "constructor": 1}}),
            "merge.value.proto_polluted",
        );
        fails(
            None,
            json!({"type": "merge", "value": {"deep": nested_objects(20)}}),
            "merge.value.too_deep",
        );
    }

    // ---- increment / decrement ----------------------------------------------------------------

    #[test]
    fn increment_missing_key() {
        // §4.6 example 1 and checks 10–12.
        assert_eq!(
            ok(
                None,
                json!([{"type": "increment", "path": "total", "by": 1}])
            ),
            json!({"total": 1})
        );
        assert_eq!(
            ok(None, json!([{"type": "increment", "path": "n", "by": 2}])),
            json!({"n": 2})
        );
        assert_eq!(
            ok(None, json!([{"type": "increment", "path": "", "by": 3}])),
            json!(3)
        );
        assert_eq!(
            ok(None, json!([{"type": "decrement", "path": "n", "by": 2}])),
            json!({"n": -2})
        );
        assert_eq!(
            ok(None, json!([{"type": "decrement", "path": "", "by": 2}])),
            json!(-2)
        );
        // Seed metrics (T3): increment by -1 on a missing key.
        assert_eq!(
            ok(
                None,
                json!([{"type": "increment", "path": "total", "by": -1}])
            ),
            json!({"total": -1})
        );
    }

    #[test]
    fn increment_root_number() {
        assert_eq!(
            ok(
                Some(json!(5)),
                json!([{"type": "increment", "path": "", "by": 2}])
            ),
            json!(7)
        );
        assert_eq!(
            ok(Some(json!(5)), json!([{"type": "decrement", "by": 2}])),
            json!(3)
        );
        assert_eq!(
            ok(Some(json!(5.5)), json!([{"type": "increment", "by": 1}])),
            json!(6.5)
        );
    }

    #[test]
    fn increment_root_non_number_fails() {
        for root in [
            json!({}),
            json!({"a": 1}),
            json!("5"),
            json!(null),
            json!([1]),
            json!(true),
        ] {
            fails(
                Some(root.clone()),
                json!({"type": "increment", "path": "", "by": 1}),
                "increment.not_number",
            );
            fails(
                Some(root),
                json!({"type": "decrement", "by": 1}),
                "decrement.not_number",
            );
        }
    }

    #[test]
    fn increment_field() {
        let cur = Some(json!({"n": 5, "f": 5.5, "other": "x"}));
        let v = ok(
            cur,
            json!([
                {"type": "increment", "path": "n", "by": 1},
                {"type": "increment", "path": "f", "by": 1},
                {"type": "increment", "path": "new", "by": 4},
                {"type": "decrement", "path": "fresh", "by": 4}
            ]),
        );
        assert_eq!(
            v,
            json!({"n": 6, "f": 6.5, "other": "x", "new": 4, "fresh": -4})
        );
        // Integers stay integers.
        assert_eq!(
            compact(&v),
            r#"{"n":6,"f":6.5,"other":"x","new":4,"fresh":-4}"#
        );
        let v = ok(
            Some(json!({"n": 1})),
            json!([{"type": "increment", "path": "n", "by": 1}]),
        );
        assert_eq!(compact(&v), r#"{"n":2}"#);
        let v = ok(
            Some(json!({"n": 10})),
            json!([{"type": "decrement", "path": "n", "by": 3}]),
        );
        assert_eq!(compact(&v), r#"{"n":7}"#);
    }

    #[test]
    fn increment_field_non_number_fails() {
        for field in [json!("5"), json!(null), json!({}), json!([1]), json!(false)] {
            let cur = Some(json!({ "k": field, "z": 1 }));
            fails(
                cur.clone(),
                json!({"type": "increment", "path": "k", "by": 1}),
                "increment.not_number",
            );
            fails(
                cur,
                json!({"type": "decrement", "path": "k", "by": 1}),
                "decrement.not_number",
            );
        }
        // by 0 still type-checks.
        fails(
            Some(json!({"k": "x"})),
            json!({"type": "increment", "path": "k", "by": 0}),
            "increment.not_number",
        );
    }

    #[test]
    fn increment_field_on_non_object_root_fails() {
        for root in [json!(5), json!(null), json!([1]), json!("s"), json!(true)] {
            fails(
                Some(root.clone()),
                json!({"type": "increment", "path": "k", "by": 1}),
                "increment.target_not_object",
            );
            fails(
                Some(root),
                json!({"type": "decrement", "path": "k", "by": 1}),
                "decrement.target_not_object",
            );
        }
    }

    #[test]
    fn fractional_by() {
        assert_eq!(
            ok(
                Some(json!({"n": 1})),
                json!([{"type": "increment", "path": "n", "by": 0.5}])
            ),
            json!({"n": 1.5})
        );
        assert_eq!(
            ok(
                Some(json!({"n": 1})),
                json!([{"type": "decrement", "path": "n", "by": 0.25}])
            ),
            json!({"n": 0.75})
        );
        let v = ok(
            Some(json!({"n": 0.5})),
            json!([{"type": "increment", "path": "n", "by": 0.5}]),
        );
        assert_eq!(v["n"].as_f64(), Some(1.0));
        assert_eq!(
            ok(None, json!([{"type": "increment", "path": "n", "by": 1.5}])),
            json!({"n": 1.5})
        );
        assert_eq!(
            ok(None, json!([{"type": "decrement", "path": "n", "by": 2.5}])),
            json!({"n": -2.5})
        );
        assert_eq!(
            ok(None, json!([{"type": "increment", "by": 1.5}])),
            json!(1.5)
        );
        assert_eq!(
            ok(Some(json!(2)), json!([{"type": "decrement", "by": 0.5}])),
            json!(1.5)
        );
        // Check 19 (float divergence): by 1.5 succeeds.
        assert_eq!(
            ok(
                Some(json!({"n": 1})),
                json!([{"type": "increment", "path": "n", "by": 1.5}])
            ),
            json!({"n": 2.5})
        );
    }

    #[test]
    fn integer_range_and_overflow() {
        let max = i64::MAX;
        // Exact beyond i64 within u64 (as the reference's u64 retry).
        let v = ok(
            Some(json!({"n": max})),
            json!([{"type": "increment", "path": "n", "by": 1}]),
        );
        assert_eq!(compact(&v), r#"{"n":9223372036854775808}"#);
        let v = ok(
            Some(json!({"n": u64::MAX - 1})),
            json!([{"type": "increment", "path": "n", "by": 1}]),
        );
        assert_eq!(v, json!({"n": u64::MAX}));
        let v = ok(
            Some(json!({"n": 9_223_372_036_854_775_808u64})),
            json!([{"type": "decrement", "path": "n", "by": 9_223_372_036_854_775_809u64}]),
        );
        assert_eq!(v, json!({"n": -1}));
        let v = ok(
            Some(json!({"n": u64::MAX})),
            json!([{"type": "increment", "path": "n", "by": i64::MIN}]),
        );
        assert_eq!(v, json!({"n": u64::MAX - (1u64 << 63)}));
        // Overflow: value unchanged, dedicated code.
        fails(
            Some(json!({"n": u64::MAX})),
            json!({"type": "increment", "path": "n", "by": 1}),
            "increment.overflow",
        );
        fails(
            Some(json!({"n": i64::MIN})),
            json!({"type": "increment", "path": "n", "by": -1}),
            "increment.overflow",
        );
        fails(
            Some(json!({"n": i64::MIN})),
            json!({"type": "decrement", "path": "n", "by": 1}),
            "decrement.overflow",
        );
        fails(
            Some(json!({"n": u64::MAX})),
            json!({"type": "decrement", "path": "n", "by": -1}),
            "decrement.overflow",
        );
        fails(
            Some(json!(i64::MIN)),
            json!({"type": "decrement", "by": u64::MAX}),
            "decrement.overflow",
        );
        // Missing target: -by.
        assert_eq!(
            ok(
                None,
                json!([{"type": "decrement", "path": "n", "by": i64::MIN}])
            ),
            json!({"n": 9_223_372_036_854_775_808u64})
        );
        fails(
            None,
            json!({"type": "decrement", "path": "n", "by": u64::MAX}),
            "decrement.overflow",
        );
        fails(
            None,
            json!({"type": "decrement", "by": u64::MAX}),
            "decrement.overflow",
        );
        // Float overflow to infinity.
        fails(
            Some(json!({"n": 1.5e308})),
            json!({"type": "increment", "path": "n", "by": 1.5e308}),
            "increment.overflow",
        );
        fails(
            Some(json!(-1.5e308)),
            json!({"type": "decrement", "by": 1.5e308}),
            "decrement.overflow",
        );
        let (_, errors) = run(
            Some(json!({"n": u64::MAX})),
            json!([{"type": "increment", "path": "n", "by": 1}]),
        );
        assert!(
            errors[0].message.contains("18446744073709551615"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn mixed_int_float_uses_f64() {
        let v = ok(
            Some(json!({"n": u64::MAX})),
            json!([{"type": "increment", "path": "n", "by": 0.5}]),
        );
        assert!(v["n"].is_f64());
        assert_eq!(v["n"].as_f64(), Some(u64::MAX as f64));
        let v = ok(
            Some(json!({"n": 2})),
            json!([{"type": "increment", "path": "n", "by": 1.0}]),
        );
        assert_eq!(v["n"].as_f64(), Some(3.0));
    }

    // ---- append -------------------------------------------------------------------------------

    #[test]
    fn append_root_missing_default() {
        assert_eq!(
            ok(None, json!([{"type": "append", "value": "x"}])),
            json!("x")
        );
        assert_eq!(
            ok(None, json!([{"type": "append", "path": "", "value": 1}])),
            json!([1])
        );
        assert_eq!(
            ok(None, json!([{"type": "append", "path": [], "value": [1]}])),
            json!([[1]])
        );
        assert_eq!(
            ok(
                None,
                json!([{"type": "append", "path": null, "value": {"k": 1}}])
            ),
            json!([{"k": 1}])
        );
        assert_eq!(
            ok(None, json!([{"type": "append", "value": null}])),
            json!([null])
        );
    }

    #[test]
    fn append_root_matrix() {
        assert_eq!(
            ok(Some(json!([1])), json!([{"type": "append", "value": 2}])),
            json!([1, 2])
        );
        assert_eq!(
            ok(
                Some(json!([1])),
                json!([{"type": "append", "value": [2, 3]}])
            ),
            json!([1, [2, 3]])
        );
        assert_eq!(
            ok(
                Some(json!("ab")),
                json!([{"type": "append", "value": "cd"}])
            ),
            json!("abcd")
        );
        fails(
            Some(json!("ab")),
            json!({"type": "append", "value": 1}),
            "append.type_mismatch",
        );
        fails(
            Some(json!("ab")),
            json!({"type": "append", "value": ["c"]}),
            "append.type_mismatch",
        );
        assert_eq!(
            ok(Some(json!(null)), json!([{"type": "append", "value": "x"}])),
            json!("x")
        );
        assert_eq!(
            ok(Some(json!(null)), json!([{"type": "append", "value": 1}])),
            json!([1])
        );
        for root in [
            json!(1),
            json!(1.5),
            json!(true),
            json!({}),
            json!({"a": 1}),
        ] {
            fails(
                Some(root),
                json!({"type": "append", "value": "x"}),
                "append.type_mismatch",
            );
        }
    }

    #[test]
    fn append_non_empty_path_on_non_object_root_fails() {
        for root in [json!(1), json!(null), json!([1]), json!("s")] {
            fails(
                Some(root.clone()),
                json!({"type": "append", "path": "k", "value": 1}),
                "append.target_not_object",
            );
            fails(
                Some(root),
                json!({"type": "append", "path": ["p", "q"], "value": 1}),
                "append.target_not_object",
            );
        }
    }

    #[test]
    fn append_single_segment() {
        let cur = Some(json!({"arr": [1], "s": "ab", "n": null, "num": 1, "obj": {}}));
        let v = ok(
            cur.clone(),
            json!([
                {"type": "append", "path": "arr", "value": 2},
                {"type": "append", "path": ["s"], "value": "cd"},
                {"type": "append", "path": "n", "value": "x"},
                {"type": "append", "path": "new_s", "value": "y"},
                {"type": "append", "path": ["new_a"], "value": 3}
            ]),
        );
        assert_eq!(
            v,
            json!({"arr": [1, 2], "s": "abcd", "n": "x", "num": 1, "obj": {}, "new_s": "y", "new_a": [3]})
        );
        assert_eq!(
            ok(
                cur.clone(),
                json!([{"type": "append", "path": "n", "value": 5}])
            )["n"],
            json!([5])
        );
        fails(
            cur.clone(),
            json!({"type": "append", "path": "num", "value": 1}),
            "append.type_mismatch",
        );
        fails(
            cur.clone(),
            json!({"type": "append", "path": "obj", "value": 1}),
            "append.type_mismatch",
        );
        fails(
            cur,
            json!({"type": "append", "path": "s", "value": 1}),
            "append.type_mismatch",
        );
    }

    #[test]
    fn append_nested_path() {
        // Check 17 / 32: missing nested leaf is always an array, even for strings.
        assert_eq!(
            ok(
                None,
                json!([{"type": "append", "path": ["p", "q"], "value": "x"}])
            ),
            json!({"p": {"q": ["x"]}})
        );
        let cur = Some(json!({"p": {"arr": [1], "s": "a", "n": null, "num": 2}}));
        let v = ok(
            cur.clone(),
            json!([
                {"type": "append", "path": ["p", "arr"], "value": 2},
                {"type": "append", "path": ["p", "s"], "value": "b"},
                {"type": "append", "path": ["p", "n"], "value": "x"},
            ]),
        );
        assert_eq!(
            v,
            json!({"p": {"arr": [1, 2], "s": "ab", "n": "x", "num": 2}})
        );
        fails(
            cur.clone(),
            json!({"type": "append", "path": ["p", "num"], "value": 1}),
            "append.type_mismatch",
        );
        fails(
            cur,
            json!({"type": "append", "path": ["p", "s"], "value": {}}),
            "append.type_mismatch",
        );
        // Intermediates are replaced destructively.
        assert_eq!(
            ok(
                Some(json!({"p": 5})),
                json!([{"type": "append", "path": ["p", "q", "r"], "value": 1}])
            ),
            json!({"p": {"q": {"r": [1]}}})
        );
    }

    #[test]
    fn append_path_limits() {
        fails(
            None,
            json!({"type": "append", "path": segments(33), "value": 1}),
            "append.path.too_deep",
        );
        let v = ok(
            None,
            json!([{"type": "append", "path": segments(32), "value": 1}]),
        );
        let mut node = &v;
        for i in 0..32 {
            node = &node[format!("s{i}")];
        }
        assert_eq!(node, &json!([1]));
        fails(
            None,
            json!({"type": "append", "path": ["a", ""], "value": 1}),
            "append.path.empty_segment",
        );
        fails(
            None,
            json!({"type": "append", "path": ["a".repeat(257)], "value": 1}),
            "append.path.segment_too_long",
        );
        ok(
            None,
            json!([{"type": "append", "path": ["a".repeat(256)], "value": 1}]),
        );
        for bad in FORBIDDEN_KEYS {
            fails(
                None,
                json!({"type": "append", "path": ["a", bad], "value": 1}),
                "append.path.proto_polluted",
            );
        }
        // Path checks precede the target check.
        fails(
            Some(json!(5)),
            json!({"type": "append", "path": ["a", ""], "value": 1}),
            "append.path.empty_segment",
        );
    }

    #[test]
    fn append_example_4_6() {
        let (v, errors) = run(
            Some(json!({"events": [], "text": "hi"})),
            json!([
                {"type": "append", "path": "events", "value": {"k": 1}},
                {"type": "append", "path": "text", "value": " there"},
                {"type": "append", "path": "text", "value": 7}
            ]),
        );
        assert_eq!(v, json!({"events": [{"k": 1}], "text": "hi there"}));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].op_index, 2);
        assert_eq!(errors[0].code, "append.type_mismatch");
    }

    // ---- remove -------------------------------------------------------------------------------

    #[test]
    fn remove_root() {
        for op in [
            json!({"type": "remove", "path": ""}),
            json!({"type": "remove"}),
            json!({"type": "remove", "path": null}),
        ] {
            assert_eq!(ok(Some(json!({"a": 1})), json!([op.clone()])), json!(null));
            assert_eq!(ok(Some(json!(5)), json!([op.clone()])), json!(null));
            assert_eq!(ok(None, json!([op])), json!(null));
        }
    }

    #[test]
    fn remove_key_preserves_order() {
        let v = ok(
            Some(json!({"a": 1, "b": 2, "c": 3})),
            json!([{"type": "remove", "path": "a"}]),
        );
        assert_eq!(compact(&v), r#"{"b":2,"c":3}"#);
        let v = ok(
            Some(json!({"a": 1})),
            json!([{"type": "remove", "path": "zzz"}]),
        );
        assert_eq!(v, json!({"a": 1}));
        let v = ok(
            Some(json!({"a.b": 1, "a": {"b": 2}})),
            json!([{"type": "remove", "path": "a.b"}]),
        );
        assert_eq!(v, json!({"a": {"b": 2}}));
    }

    #[test]
    fn remove_key_on_non_object_root_fails() {
        for root in [json!(5), json!(null), json!([1]), json!("s")] {
            fails(
                Some(root),
                json!({"type": "remove", "path": "k"}),
                "remove.target_not_object",
            );
        }
    }

    // ---- generic path codes of single-string ops ------------------------------------------------

    #[test]
    fn single_string_ops_path_codes() {
        for ty in SINGLE_OPS {
            for bad in FORBIDDEN_KEYS {
                fails(
                    Some(json!({"a": 1})),
                    op_with_path(ty, json!(bad)),
                    &format!("{ty}.path.proto_polluted"),
                );
            }
            fails(
                Some(json!({"a": 1})),
                op_with_path(ty, json!("x".repeat(257))),
                &format!("{ty}.path.segment_too_long"),
            );
            let (_, errors) = run(
                Some(json!({"a": 1})),
                json!([op_with_path(ty, json!("x".repeat(256)))]),
            );
            assert!(errors.is_empty(), "{ty}: {errors:?}");
            // Path checks run before the target checks.
            fails(
                Some(json!(5)),
                op_with_path(ty, json!("__proto__")),
                &format!("{ty}.path.proto_polluted"),
            );
        }
        // Check 16.
        fails(
            None,
            json!({"type": "set", "path": "__proto__", "value": 1}),
            "set.path.proto_polluted",
        );
        fails(
            Some(json!({"s": "x"})),
            json!({"type": "increment", "path": "s", "by": 1}),
            "increment.not_number",
        );
        fails(
            Some(json!(5)),
            json!({"type": "set", "path": "x", "value": 1}),
            "set.target_not_object",
        );
    }

    #[test]
    fn every_documented_code_is_reachable() {
        let cases: Vec<(Option<Value>, Value, &str)> = vec![
            (
                Some(json!(5)),
                json!({"type": "set", "path": "x", "value": 1}),
                "set.target_not_object",
            ),
            (
                None,
                json!({"type": "merge", "path": segments(33), "value": {}}),
                "merge.path.too_deep",
            ),
            (
                None,
                json!({"type": "merge", "path": ["x".repeat(257)], "value": {}}),
                "merge.path.segment_too_long",
            ),
            (
                None,
                json!({"type": "merge", "path": [""], "value": {}}),
                "merge.path.empty_segment",
            ),
            (
                None,
                json!({"type": "merge", "path": ["prototype"], "value": {}}),
                "merge.path.proto_polluted",
            ),
            (
                None,
                json!({"type": "merge", "value": 1}),
                "merge.value.not_an_object",
            ),
            (
                None,
                json!({"type": "merge", "value": object_with_keys(2000)}),
                "merge.value.too_many_keys",
            ),
            (
                None,
                json!({"type": "merge", "value": {"prototype": 1}}),
                "merge.value.proto_polluted",
            ),
            (
                None,
                json!({"type": "merge", "value": nested_objects(40)}),
                "merge.value.too_deep",
            ),
            (
                Some(json!(1)),
                json!({"type": "append", "path": "a", "value": 1}),
                "append.target_not_object",
            ),
            (
                Some(json!(1)),
                json!({"type": "append", "value": 1}),
                "append.type_mismatch",
            ),
            (
                Some(json!(1)),
                json!({"type": "increment", "path": "a", "by": 1}),
                "increment.target_not_object",
            ),
            (
                Some(json!("1")),
                json!({"type": "increment", "by": 1}),
                "increment.not_number",
            ),
            (
                Some(json!(1)),
                json!({"type": "decrement", "path": "a", "by": 1}),
                "decrement.target_not_object",
            ),
            (
                Some(json!("1")),
                json!({"type": "decrement", "by": 1}),
                "decrement.not_number",
            ),
            (
                Some(json!(1)),
                json!({"type": "remove", "path": "a"}),
                "remove.target_not_object",
            ),
            (
                None,
                json!({"type": "set", "path": "x".repeat(257)}),
                "set.path.segment_too_long",
            ),
            (
                None,
                json!({"type": "set", "path": "constructor"}),
                "set.path.proto_polluted",
            ),
            (
                None,
                json!({"type": "append", "path": segments(33), "value": 1}),
                "append.path.too_deep",
            ),
            (
                None,
                json!({"type": "append", "path": ["x".repeat(257)], "value": 1}),
                "append.path.segment_too_long",
            ),
            (
                None,
                json!({"type": "append", "path": [""], "value": 1}),
                "append.path.empty_segment",
            ),
            (
                None,
                json!({"type": "append", "path": "__proto__", "value": 1}),
                "append.path.proto_polluted",
            ),
            (
                None,
                json!({"type": "increment", "path": "x".repeat(257), "by": 1}),
                "increment.path.segment_too_long",
            ),
            (
                None,
                json!({"type": "increment", "path": "__proto__", "by": 1}),
                "increment.path.proto_polluted",
            ),
            (
                None,
                json!({"type": "decrement", "path": "x".repeat(257), "by": 1}),
                "decrement.path.segment_too_long",
            ),
            (
                None,
                json!({"type": "decrement", "path": "__proto__", "by": 1}),
                "decrement.path.proto_polluted",
            ),
            (
                None,
                json!({"type": "remove", "path": "x".repeat(257)}),
                "remove.path.segment_too_long",
            ),
            (
                None,
                json!({"type": "remove", "path": "__proto__"}),
                "remove.path.proto_polluted",
            ),
            (
                Some(json!({"n": u64::MAX})),
                json!({"type": "increment", "path": "n", "by": 1}),
                "increment.overflow",
            ),
            (
                Some(json!({"n": i64::MIN})),
                json!({"type": "decrement", "path": "n", "by": 1}),
                "decrement.overflow",
            ),
        ];
        for (current, op, code) in cases {
            fails(current, op, code);
        }
    }

    // ---- missing-default flag, best effort, T1 --------------------------------------------------

    #[test]
    fn missing_default_flag() {
        // Stays set across root increments only until the first success.
        assert_eq!(
            ok(
                None,
                json!([{"type": "increment", "by": 1}, {"type": "increment", "by": 1}])
            ),
            json!(2)
        );
        // Cleared by any successful op, even a no-op remove of an absent key.
        for first in [
            json!({"type": "set", "path": "a", "value": 1}),
            json!({"type": "remove", "path": "zzz"}),
            json!({"type": "merge", "value": {}}),
            json!({"type": "increment", "path": "n", "by": 1}),
        ] {
            let (_, idx, code) =
                one_err(None, json!([first.clone(), {"type": "increment", "by": 2}]));
            assert_eq!(
                (idx, code.as_str()),
                (1, "increment.not_number"),
                "after {first}"
            );
            let (_, idx, code) = one_err(
                None,
                json!([first.clone(), {"type": "append", "value": "x"}]),
            );
            assert_eq!(
                (idx, code.as_str()),
                (1, "append.type_mismatch"),
                "after {first}"
            );
        }
        // Not cleared by a failing op.
        let (v, idx, code) = one_err(
            None,
            json!([{"type": "set", "path": "__proto__", "value": 1}, {"type": "increment", "by": 2}]),
        );
        assert_eq!(
            (v, idx, code.as_str()),
            (json!(2), 0, "set.path.proto_polluted")
        );
        // A stored null / {} is not "missing".
        fails(
            Some(json!(null)),
            json!({"type": "increment", "by": 1}),
            "increment.not_number",
        );
        fails(
            Some(json!({})),
            json!({"type": "increment", "by": 1}),
            "increment.not_number",
        );
        fails(
            Some(json!({})),
            json!({"type": "append", "value": "x"}),
            "append.type_mismatch",
        );
        // Empty ops on a missing key yield {}.
        assert_eq!(ok(None, json!([])), json!({}));
        assert_eq!(ok(Some(json!(4)), json!([])), json!(4));
    }

    #[test]
    fn best_effort_application() {
        let (v, errors) = run(
            Some(json!({"count": 1, "s": "x"})),
            json!([
                {"type": "increment", "path": "count", "by": 2},
                {"type": "increment", "path": "s", "by": 1},
                {"type": "merge", "value": [1]},
                {"type": "set", "path": "t", "value": true},
                {"type": "set", "path": "__proto__", "value": true},
                {"type": "decrement", "path": "count", "by": 1}
            ]),
        );
        assert_eq!(v, json!({"count": 2, "s": "x", "t": true}));
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.op_index, e.code.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "increment.not_number"),
                (2, "merge.value.not_an_object"),
                (4, "set.path.proto_polluted")
            ]
        );
        // Every op failing still returns the (unchanged) value.
        let (v, errors) = run(
            None,
            json!([{"type": "merge", "value": 1}, {"type": "append", "path": [""], "value": 1}]),
        );
        assert_eq!(v, json!({}));
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn t1_absent_or_null_path_is_root_for_every_op() {
        // Check 31.
        for path in [None, Some(json!(null))] {
            let with = |mut op: Value| {
                if let Some(p) = &path {
                    op.as_object_mut().unwrap().insert("path".into(), p.clone());
                }
                json!([op])
            };
            assert_eq!(
                ok(
                    Some(json!({"z": 0})),
                    with(json!({"type": "set", "value": {"a": 1}}))
                ),
                json!({"a": 1})
            );
            assert_eq!(
                ok(None, with(json!({"type": "increment", "by": 2}))),
                json!(2)
            );
            assert_eq!(
                ok(None, with(json!({"type": "decrement", "by": 2}))),
                json!(-2)
            );
            assert_eq!(
                ok(Some(json!({"a": 1})), with(json!({"type": "remove"}))),
                json!(null)
            );
            assert_eq!(
                ok(None, with(json!({"type": "append", "value": "x"}))),
                json!("x")
            );
            assert_eq!(
                ok(
                    Some(json!({"a": 1})),
                    with(json!({"type": "merge", "value": {"b": 2}}))
                ),
                json!({"a": 1, "b": 2})
            );
        }
    }

    #[test]
    fn compat_checks_at_ops_level() {
        // 10, 11, 12.
        assert_eq!(
            ok(None, json!([{"type": "increment", "path": "n", "by": 2}])),
            json!({"n": 2})
        );
        assert_eq!(
            ok(None, json!([{"type": "increment", "path": "", "by": 3}])),
            json!(3)
        );
        assert_eq!(
            ok(None, json!([{"type": "decrement", "path": "n", "by": 2}])),
            json!({"n": -2})
        );
        // 13.
        let (v, idx, code) = one_err(None, json!([{"type": "merge", "value": [1]}]));
        assert_eq!(
            (v, idx, code.as_str()),
            (json!({}), 0, "merge.value.not_an_object")
        );
        // 14.
        fails(
            None,
            json!({"type": "merge", "path": segments(33), "value": {}}),
            "merge.path.too_deep",
        );
        fails(
            None,
            json!({"type": "merge", "path": ["__proto__"], "value": {}}),
            "merge.path.proto_polluted",
        );
        fails(
            None,
            json!({"type": "merge", "path": ["a", ""], "value": {}}),
            "merge.path.empty_segment",
        );
        fails(
            None,
            json!({"type": "merge", "path": ["x".repeat(257)], "value": {}}),
            "merge.path.segment_too_long",
        );
        // 15.
        fails(
            None,
            json!({"type": "merge", "value": object_with_keys(1025)}),
            "merge.value.too_many_keys",
        );
        fails(
            None,
            json!({"type": "merge", "value": nested_objects(17)}),
            "merge.value.too_deep",
        );
        // 16.
        fails(
            None,
            json!({"type": "set", "path": "__proto__", "value": 1}),
            "set.path.proto_polluted",
        );
        fails(
            Some(json!({"f": "s"})),
            json!({"type": "increment", "path": "f", "by": 1}),
            "increment.not_number",
        );
        fails(
            Some(json!(5)),
            json!({"type": "set", "path": "x", "value": 1}),
            "set.target_not_object",
        );
        // 17.
        assert_eq!(
            ok(
                Some(json!({})),
                json!([{"type": "append", "path": "t", "value": "x"}])
            ),
            json!({"t": "x"})
        );
        fails(
            Some(json!({"t": "x"})),
            json!({"type": "append", "path": "t", "value": 1}),
            "append.type_mismatch",
        );
        assert_eq!(
            ok(
                None,
                json!([{"type": "append", "path": ["p", "q"], "value": "x"}])
            ),
            json!({"p": {"q": ["x"]}})
        );
        // 18.
        assert_eq!(
            ok(
                Some(json!({"a": 1})),
                json!([{"type": "remove", "path": ""}])
            ),
            json!(null)
        );
        // 19.
        assert_eq!(
            ok(
                Some(json!({"n": 1})),
                json!([{"type": "increment", "path": "n", "by": 1.5}])
            ),
            json!({"n": 2.5})
        );
        decode_err(json!([{"type": "multiply"}]));
        // 32.
        assert_eq!(
            ok(
                Some(json!({"p": {"q": [1]}})),
                json!([{"type": "append", "path": ["p", "q"], "value": 2}])
            ),
            json!({"p": {"q": [1, 2]}})
        );
    }

    #[test]
    fn apply_does_not_touch_the_input() {
        let current = json!({"a": 1});
        let ops = decode_ops(&json!([{"type": "set", "path": "a", "value": 2}])).unwrap();
        let (v, _) = apply_ops(Some(&current), &ops);
        assert_eq!(current, json!({"a": 1}));
        assert_eq!(v, json!({"a": 2}));
    }

    #[test]
    fn key_some_empty_is_root() {
        // Hand-built ops (not via decode) with `Some("")` behave like the root.
        let ops = [UpdateOp::Increment {
            key: Some(String::new()),
            by: Number::from(4),
        }];
        assert_eq!(apply_ops(None, &ops), (json!(4), vec![]));
        let ops = [UpdateOp::Remove {
            key: Some(String::new()),
        }];
        assert_eq!(
            apply_ops(Some(&json!({"a": 1})), &ops),
            (json!(null), vec![])
        );
    }

    // ---- property tests -----------------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-c]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-c]{1,2}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn arb_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-c]{1,2}",
            1 => Just(String::new()),
            1 => Just("__proto__".to_string()),
            1 => Just("x".repeat(257)),
        ]
    }

    fn arb_path_json() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            arb_segment().prop_map(Value::String),
            prop::collection::vec(arb_segment().prop_map(Value::String), 0..4)
                .prop_map(Value::Array),
            Just(segments(33)),
        ]
    }

    fn arb_key_json() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Null), arb_segment().prop_map(Value::String)]
    }

    fn arb_by() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(|i| json!(i)),
            (-3i64..3).prop_map(|i| json!(i)),
            Just(json!(u64::MAX)),
            (-1e3f64..1e3).prop_map(|f| json!(f)),
        ]
    }

    fn arb_op() -> impl Strategy<Value = Value> {
        prop_oneof![
            (arb_key_json(), arb_json())
                .prop_map(|(p, v)| json!({"type": "set", "path": p, "value": v})),
            (arb_path_json(), arb_json())
                .prop_map(|(p, v)| json!({"type": "merge", "path": p, "value": v})),
            (arb_key_json(), arb_by())
                .prop_map(|(p, b)| json!({"type": "increment", "path": p, "by": b})),
            (arb_key_json(), arb_by())
                .prop_map(|(p, b)| json!({"type": "decrement", "path": p, "by": b})),
            (arb_path_json(), arb_json())
                .prop_map(|(p, v)| json!({"type": "append", "path": p, "value": v})),
            arb_key_json().prop_map(|p| json!({"type": "remove", "path": p})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Decoding arbitrary JSON never panics.
        #[test]
        fn prop_decode_never_panics(ops in arb_json()) {
            let _ = decode_ops(&ops);
            let _ = decode_ops(&json!([ops]));
        }

        /// Well-formed ops always decode; applying them never panics; errors are at most one per
        /// op, in op order; a failing op leaves the value exactly as it was before it.
        #[test]
        fn prop_failed_ops_change_nothing(
            current in prop::option::of(arb_json()),
            ops in prop::collection::vec(arb_op(), 0..6),
        ) {
            let decoded = decode_ops(&Value::Array(ops.clone())).expect("well-formed ops decode");
            let (_, errors) = apply_ops(current.as_ref(), &decoded);
            for pair in errors.windows(2) {
                prop_assert!(pair[0].op_index < pair[1].op_index);
            }
            for e in &errors {
                prop_assert!(e.op_index < decoded.len());
                prop_assert!(e.code.starts_with(decoded[e.op_index].type_name()));
            }
            for e in &errors {
                let (before, _) = apply_ops(current.as_ref(), &decoded[..e.op_index]);
                let (after, _) = apply_ops(current.as_ref(), &decoded[..=e.op_index]);
                prop_assert_eq!(before, after);
            }
        }

        /// Integer increment then decrement by the same amount round-trips.
        #[test]
        fn prop_increment_decrement_roundtrip(start in any::<i64>(), by in any::<i64>()) {
            let mid = i128::from(start) + i128::from(by);
            prop_assume!(mid >= i128::from(i64::MIN) && mid <= i128::from(u64::MAX));
            let ops = json!([
                {"type": "increment", "path": "n", "by": by},
                {"type": "decrement", "path": "n", "by": by}
            ]);
            let (v, errors) = run(Some(json!({"n": start})), ops);
            prop_assert!(errors.is_empty());
            prop_assert_eq!(v, json!({"n": start}));
        }

        /// Integer results are exact whenever they fit the JSON integer range.
        #[test]
        fn prop_integer_arithmetic_exact(start in any::<i64>(), by in any::<i64>(), sub in any::<bool>()) {
            let ty = if sub { "decrement" } else { "increment" };
            let (v, errors) = run(Some(json!(start)), json!([{"type": ty, "by": by}]));
            let expected = if sub { i128::from(start) - i128::from(by) } else { i128::from(start) + i128::from(by) };
            if let Ok(i) = i64::try_from(expected) {
                prop_assert!(errors.is_empty());
                prop_assert_eq!(v, json!(i));
            } else if let Ok(u) = u64::try_from(expected) {
                prop_assert!(errors.is_empty());
                prop_assert_eq!(v, json!(u));
            } else {
                prop_assert_eq!(errors.len(), 1);
                prop_assert_eq!(errors[0].code.clone(), format!("{ty}.overflow"));
                prop_assert_eq!(v, json!(start));
            }
        }

        /// Root merge into an object: every merged key takes the new value, other keys untouched.
        #[test]
        fn prop_root_merge_is_shallow_overwrite(
            base in prop::collection::vec(("[a-d]", arb_json()), 0..5),
            patch in prop::collection::vec(("[a-d]", arb_json()), 0..5),
        ) {
            let base: Map<String, Value> = base.into_iter().collect();
            let patch: Map<String, Value> = patch.into_iter().collect();
            let patch_value = Value::Object(patch.clone());
            let depth_ok = nesting_depth(&patch_value) <= MAX_MERGE_DEPTH;
            let (v, errors) = run(Some(Value::Object(base.clone())), json!([{"type": "merge", "value": patch_value}]));
            prop_assume!(depth_ok);
            prop_assert!(errors.is_empty());
            let out = v.as_object().unwrap();
            for (k, val) in &patch {
                prop_assert_eq!(&out[k], val);
            }
            for (k, val) in &base {
                if !patch.contains_key(k) {
                    prop_assert_eq!(&out[k], val);
                }
            }
            prop_assert_eq!(out.len(), base.keys().chain(patch.keys()).collect::<std::collections::BTreeSet<_>>().len());
        }

        /// The iterative depth equals a straightforward recursive definition on small values.
        #[test]
        fn prop_depth_matches_recursive_definition(v in arb_json()) {
            fn rec(v: &Value) -> usize {
                match v {
                    Value::Array(a) => 1 + a.iter().map(rec).max().unwrap_or(0),
                    Value::Object(m) => 1 + m.values().map(rec).max().unwrap_or(0),
                    _ => 0,
                }
            }
            prop_assert_eq!(nesting_depth(&v), rec(&v));
        }
    }
}
