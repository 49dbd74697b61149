//! Live watch fan-out shared by the memory and embedded backends.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{Error, Revision, WatchEvent, WatchStream};

/// How many live events a watcher may fall behind before its stream ends with
/// [`Error::WatchLagged`].
pub(crate) const DEFAULT_WATCH_BUFFER: usize = 16 * 1024;

/// Every committed event, in revision order, to every live watcher.
pub(crate) type Fanout = broadcast::Sender<Arc<WatchEvent>>;

/// A watch stream: `history` (events after the watch's start revision up to `after`, already
/// filtered by prefix and in revision order), then the live events of `rx` that come after
/// `after` and match `prefix`. `rx` must have subscribed before `history` was read, so
/// that nothing falls between the two; events seen in both are dropped from the live part.
pub(crate) fn stream(
    history: Vec<WatchEvent>,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    prefix: String,
    after: Revision,
) -> WatchStream {
    struct Live {
        rx: broadcast::Receiver<Arc<WatchEvent>>,
        prefix: String,
        after: Revision,
    }
    let live = futures::stream::unfold(Some(Live { rx, prefix, after }), |state| async move {
        let mut live = state?;
        loop {
            match live.rx.recv().await {
                Ok(event) => {
                    if event.revision() <= live.after || !event.kv.key.starts_with(&live.prefix) {
                        continue;
                    }
                    live.after = event.revision();
                    return Some((Ok(WatchEvent::clone(&event)), Some(live)));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(prefix = %live.prefix, missed, "watcher lagged; ending its stream");
                    return Some((Err(Error::WatchLagged { missed }), None));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    futures::stream::iter(history.into_iter().map(Ok))
        .chain(live)
        .boxed()
}
