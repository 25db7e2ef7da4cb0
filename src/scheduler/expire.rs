//! Session expiry (compat spec §9.4): every active session whose `expires_at` has passed is
//! retired exactly as `PUT /sessions/{id} active=false` does (`alloc::retire_locked`: nodes →
//! `deprovisioning`, audit row, NOTIFY), one transaction per session under its row lock, so a
//! concurrent API extension or retirement and other schedulers are safe. The daemon sleeps until
//! the next `expires_at` (and is woken by NOTIFY), instead of polling every few minutes.

use super::{Scheduler, SchedulerError};
use crate::alloc::{self, SessionError};
use crate::db::{jobs, sessions};

/// Retire every due session; returns how many this call retired.
pub async fn expire_due(s: &Scheduler) -> Result<usize, SchedulerError> {
    let ids = {
        let c = s.db.get().await?;
        jobs::expired_sessions(&**c).await?
    };
    let mut n = 0;
    for id in ids {
        let mut conn = s.db.get().await?;
        let tx = conn.transaction().await?;
        let Some(row) = sessions::get_for_update(&*tx, id).await? else {
            continue;
        };
        let now = sessions::now_utc(&*tx).await?;
        if row.retired_at.is_some() || row.expires_at.is_none_or(|e| e > now) {
            continue; // retired or extended meanwhile
        }
        match alloc::retire_locked(&*tx, &s.cfg, id, "scheduler").await {
            Ok(nodes) => {
                tx.commit().await?;
                let late = (now - row.expires_at.unwrap_or(now)).num_milliseconds();
                tracing::info!(
                    session = id,
                    ?nodes,
                    late_ms = late,
                    "session expired and retired"
                );
                n += 1;
            }
            Err(SessionError::Db(e)) => return Err(e.into()),
            Err(e) => return Err(SchedulerError::Other(e.to_string())),
        }
    }
    Ok(n)
}
