//! Request coalescing ("single flight") for read-mostly aggregates such as a pool's per-state
//! node counts: concurrent requests for the same key share one database query instead of each
//! running their own. Nothing is cached beyond the query in flight — a request never sees a
//! result of a query that finished before it arrived — so several server processes cannot
//! disagree for longer than one query.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Slot<T> = watch::Receiver<Option<Result<Arc<T>, String>>>;

/// Shares in-flight computations per key.
pub struct Coalescer<T> {
    inflight: Mutex<HashMap<String, Slot<T>>>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

struct Unregister<'a, T> {
    map: &'a Mutex<HashMap<String, Slot<T>>>,
    key: &'a str,
}

impl<T> Drop for Unregister<'_, T> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(self.key);
        }
    }
}

impl<T: Send + Sync + 'static> Coalescer<T> {
    /// Run `f` for `key`, or wait for the identical run already in flight.
    pub async fn run<F, Fut>(&self, key: &str, f: F) -> Result<Arc<T>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let role = {
            let mut map = self.inflight.lock().expect("coalescer");
            match map.get(key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.to_string(), rx);
                    Ok(tx)
                }
            }
        };
        let tx = match role {
            Ok(tx) => tx,
            Err(rx) => return Self::follow(rx, f).await,
        };
        // removes the entry even if this (leading) request is cancelled mid-query
        let guard = Unregister {
            map: &self.inflight,
            key,
        };
        let out = f().await.map(Arc::new);
        // unregister first: later arrivals start a fresh query
        drop(guard);
        let _ = tx.send(Some(out.clone()));
        out
    }

    async fn follow<F, Fut>(mut rx: Slot<T>, f: F) -> Result<Arc<T>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        loop {
            if let Some(r) = rx.borrow().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                // the leader went away (cancelled request): compute ourselves
                return f().await.map(Arc::new);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run() {
        let c = Arc::new(Coalescer::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (c, runs) = (c.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Ok(7)
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap(), 7);
        }
        assert!(runs.load(Ordering::SeqCst) < 20, "no sharing happened");
        // after completion a new call runs again
        let before = runs.load(Ordering::SeqCst);
        c.run("k", || async { Ok(1) }).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), before);
    }
}
