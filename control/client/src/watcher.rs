//! A resilient watch: list, then watch from the list's resourceVersion, resume from the last
//! seen resourceVersion when the connection ends, and relist when the server answers 410 Gone.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::api::{Api, ListParams, Object, WatchEvent};
use crate::error::{Error, Result};

/// What a [`watcher`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// An object was added or changed.
    Applied(K),
    /// An object was deleted (its last state).
    Deleted(K),
    /// A full (re)list: this is now the complete set of objects.
    Restarted(Vec<K>),
}

/// Seconds a single watch connection asks the server to stay open (client-go picks 5-10 min).
const WATCH_TIMEOUT_SECONDS: u32 = 290;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const LIST_PAGE: u32 = 500;

enum State<K> {
    /// Needs a (re)list.
    Empty,
    /// Needs a watch connection from `rv`.
    Listed { rv: String },
    /// Streaming.
    Watching {
        rv: String,
        stream: BoxStream<'static, Result<WatchEvent<K>>>,
        got_event: bool,
    },
}

struct Machine<K> {
    api: Api<K>,
    lp: ListParams,
    state: State<K>,
    backoff: Option<Duration>,
}

impl<K: Object> Machine<K> {
    fn fail(&mut self) {
        let next = self
            .backoff
            .map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
        self.backoff = Some(next);
    }
}

async fn list_all<K: Object>(api: &Api<K>, base: &ListParams) -> Result<(Vec<K>, String)> {
    let mut lp = base.clone();
    lp.limit = Some(LIST_PAGE);
    lp.continue_token = None;
    let mut items = Vec::new();
    loop {
        let page = api.list(&lp).await?;
        items.extend(page.items);
        match page.continue_token {
            Some(c) => lp.continue_token = Some(c),
            None => return Ok((items, page.resource_version)),
        }
    }
}

impl<K: Object> Machine<K> {
    /// Advances until there is something to report.
    async fn step(&mut self) -> Result<Event<K>> {
        loop {
            if let Some(b) = self
                .backoff
                .filter(|_| !matches!(self.state, State::Watching { .. }))
            {
                tokio::time::sleep(b).await;
            }
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => match list_all(&self.api, &self.lp).await {
                    Ok((items, rv)) => {
                        tracing::debug!(resource = self.api.resource().plural, count = items.len(), %rv, "listed");
                        self.backoff = None;
                        self.state = State::Listed { rv };
                        return Ok(Event::Restarted(items));
                    }
                    Err(e) => {
                        self.fail();
                        return Err(e);
                    }
                },
                State::Listed { rv } => {
                    let mut lp = self.lp.clone();
                    lp.timeout_seconds = Some(WATCH_TIMEOUT_SECONDS);
                    match self.api.watch(&lp, &rv).await {
                        Ok(s) => {
                            self.state = State::Watching {
                                rv,
                                stream: s.boxed(),
                                got_event: false,
                            };
                        }
                        Err(e) if e.is_gone() => {
                            tracing::info!(resource = self.api.resource().plural, %rv, "resourceVersion too old; relisting");
                        }
                        Err(e) => {
                            self.state = State::Listed { rv };
                            self.fail();
                            return Err(e);
                        }
                    }
                }
                State::Watching {
                    mut rv,
                    mut stream,
                    got_event,
                } => match stream.next().await {
                    Some(Ok(ev)) => {
                        let out = match ev {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                rv = o.resource_version().to_string();
                                Some(Event::Applied(o))
                            }
                            WatchEvent::Deleted(o) => {
                                rv = o.resource_version().to_string();
                                Some(Event::Deleted(o))
                            }
                            WatchEvent::Bookmark(b) => {
                                if !b.is_empty() {
                                    rv = b;
                                }
                                None
                            }
                            WatchEvent::Error(s) if s.code == 410 => {
                                tracing::info!(resource = self.api.resource().plural, %rv, message = %s.message, "watch expired; relisting");
                                self.state = State::Empty;
                                continue;
                            }
                            WatchEvent::Error(s) => {
                                self.state = State::Listed { rv };
                                self.fail();
                                return Err(Error::Api(s));
                            }
                        };
                        self.backoff = None;
                        self.state = State::Watching {
                            rv,
                            stream,
                            got_event: true,
                        };
                        if let Some(ev) = out {
                            return Ok(ev);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream failed; resuming");
                        self.state = State::Listed { rv };
                        self.fail();
                        return Err(e);
                    }
                    None => {
                        tracing::debug!(%rv, "watch closed; resuming");
                        if !got_event {
                            // A connection that ends at once must not spin.
                            self.fail();
                        }
                        self.state = State::Listed { rv };
                    }
                },
            }
        }
    }
}

/// Lists then watches `api` forever, yielding [`Event`]s. Errors are yielded and the stream
/// goes on (with exponential backoff); on 410 Gone it relists and yields
/// [`Event::Restarted`].
pub fn watcher<K: Object>(
    api: Api<K>,
    lp: ListParams,
) -> impl Stream<Item = Result<Event<K>>> + Send {
    let m = Machine {
        api,
        lp,
        state: State::Empty,
        backoff: None,
    };
    futures::stream::unfold(m, |mut m| async move {
        let r = m.step().await;
        Some((r, m))
    })
}
