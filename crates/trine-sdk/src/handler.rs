//! Type erasure of user function handlers, so the registry can hold any async closure.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::Value;
use trine_protocol::ErrorBody;

/// Error code used when a handler's result cannot be turned into JSON, or the handler panicked
/// (the code every iii SDK uses for a failing handler).
pub const INVOCATION_FAILED: &str = "invocation_failed";

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, ErrorBody>> + Send>>;

/// A registered function body: payload in, JSON value or error body out.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, payload: Value) -> HandlerFuture;
}

/// Adapts `Fn(Value) -> impl Future<Output = Result<R, ErrorBody>>` to [`Handler`].
pub(crate) struct FnHandler<F>(pub(crate) F);

impl<F, Fut, R> Handler for FnHandler<F>
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ErrorBody>> + Send + 'static,
    R: Serialize + Send + 'static,
{
    fn call(&self, payload: Value) -> HandlerFuture {
        let fut = (self.0)(payload);
        Box::pin(async move { fut.await.and_then(into_value) })
    }
}

/// Converts a handler's return value to JSON; a `Value` is moved, not re-serialized.
fn into_value<R: Serialize + 'static>(r: R) -> Result<Value, ErrorBody> {
    let any: Box<dyn Any> = Box::new(r);
    match any.downcast::<Value>() {
        Ok(v) => Ok(*v),
        Err(any) => match any.downcast::<R>() {
            Ok(r) => serde_json::to_value(*r).map_err(|e| {
                ErrorBody::new(
                    INVOCATION_FAILED,
                    format!("handler result is not valid JSON: {e}"),
                )
            }),
            // Unreachable: the box was built from an `R` just above.
            Err(_) => Err(ErrorBody::new(
                INVOCATION_FAILED,
                "handler result has an unexpected type",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn values_structs_and_errors() {
        let h = FnHandler(|v: Value| async move { Ok::<_, ErrorBody>(v) });
        assert_eq!(h.call(json!({"a":1})).await.unwrap(), json!({"a":1}));

        let h = FnHandler(|_v: Value| async move {
            Ok::<_, ErrorBody>(BTreeMap::from([("hello", "world")]))
        });
        assert_eq!(h.call(Value::Null).await.unwrap(), json!({"hello":"world"}));

        let h = FnHandler(
            |_v: Value| async move { Err::<Value, _>(ErrorBody::new("bad_input", "no")) },
        );
        assert_eq!(h.call(Value::Null).await.unwrap_err().code, "bad_input");

        // A map with non-string keys cannot become JSON.
        let h =
            FnHandler(|_v: Value| async move { Ok::<_, ErrorBody>(BTreeMap::from([((1, 2), 3)])) });
        assert_eq!(
            h.call(Value::Null).await.unwrap_err().code,
            INVOCATION_FAILED
        );
    }
}
