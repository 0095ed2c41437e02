//! The Redis server of the test suites, shared by every crate's Redis tests.
//!
//! `TRINE_TEST_REDIS_URL` names it (default `redis://127.0.0.1:6379/`). A test that finds no
//! server fails, unless `TRINE_TEST_REDIS_OPTIONAL=1`, which skips it with a note.

use std::time::Duration;

/// The test server's URL.
pub fn redis_url() -> String {
    std::env::var("TRINE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A connection to the test server (TCP_NODELAY, 5 s read timeout), or `None` (with a note)
/// when none answers and `TRINE_TEST_REDIS_OPTIONAL=1`; without that, no server panics.
pub fn redis_admin() -> Option<redis::Connection> {
    let url = redis_url();
    let answer = crate::redis::nodelay_client(&url).and_then(|client| {
        let mut c = client.get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        redis::cmd("PING").query::<()>(&mut c)?;
        Ok(c)
    });
    match answer {
        Ok(c) => Some(c),
        Err(e) if std::env::var("TRINE_TEST_REDIS_OPTIONAL").as_deref() == Ok("1") => {
            eprintln!(
                "skipped: no Redis server answers at {url} ({e}); TRINE_TEST_REDIS_OPTIONAL=1"
            );
            None
        }
        Err(e) => panic!(
            "no Redis server answers at {url}: {e}. Start one (redis-server --port 6379), point \
             TRINE_TEST_REDIS_URL at one, or set TRINE_TEST_REDIS_OPTIONAL=1 to skip the Redis \
             tests"
        ),
    }
}
