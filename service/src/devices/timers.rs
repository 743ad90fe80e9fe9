//! The device actors' timers, kept in one place: each actor's next deadline, and one task
//! that wakes each actor when its deadline comes. A pending actix timer per actor
//! (`run_later`) holds a tokio timer of its own, about 128 bytes per live device; an
//! entry here is a few dozen, and a live device always has a deadline (passivation at
//! the latest).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Message, WeakAddr};
use fleetwatch_protocol::now_ms;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::actor::DeviceActor;

/// An actor's deadline has come: the service clock (ms) it was armed for.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TimerDue(pub i64);

/// Which actor a deadline is for; unique among the actors of the process.
pub type TimerId = u64;

#[derive(Default)]
pub struct ActorTimers {
    /// Armed deadlines by (service clock ms, actor), earliest first. Weak: a timer does
    /// not keep an actor alive.
    armed: Mutex<BTreeMap<(i64, TimerId), WeakAddr<DeviceActor>>>,
    /// Told when the earliest deadline moved earlier.
    earlier: Notify,
    next_id: AtomicU64,
}

impl ActorTimers {
    /// A timer id for a new actor.
    pub fn new_id(&self) -> TimerId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Arm actor `id`'s timer for `at` (service clock, ms), in place of the one armed
    /// for `replaced`, if any.
    pub fn arm(&self, id: TimerId, replaced: Option<i64>, at: i64, actor: WeakAddr<DeviceActor>) {
        let mut armed = self.armed.lock();
        if let Some(replaced) = replaced {
            armed.remove(&(replaced, id));
        }
        let earliest = armed
            .first_key_value()
            .is_none_or(|(&(first, _), _)| at < first);
        armed.insert((at, id), actor);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Forget actor `id`'s timer armed for `at` (it stopped).
    pub fn disarm(&self, id: TimerId, at: i64) {
        self.armed.lock().remove(&(at, id));
    }

    /// Wake every actor whose deadline came, for as long as the process runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            let first = self.armed.lock().first_key_value().map(|(&(at, _), _)| at);
            // A deadline armed from here on is not missed: `notify_one` keeps a permit
            // for the next wait when nobody waits yet.
            let earlier = self.earlier.notified();
            match first {
                None => earlier.await,
                Some(at) => {
                    let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
                    // Either way, look again at what is due.
                    let _ = tokio::time::timeout(wait, earlier).await;
                }
            }
            self.wake_due(now_ms());
        }
    }

    /// Take the deadlines up to `now` off the list and tell their actors.
    fn wake_due(&self, now: i64) {
        let due = {
            let mut armed = self.armed.lock();
            let later = armed.split_off(&(now.saturating_add(1), 0));
            std::mem::replace(&mut *armed, later)
        };
        for ((at, _), actor) in due {
            // A stopped actor has nothing to do.
            if let Some(actor) = actor.upgrade() {
                actor.do_send(TimerDue(at));
            }
        }
    }
}
