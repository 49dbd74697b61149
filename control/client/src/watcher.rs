//! A resilient watch: list, then watch from the list's resourceVersion, resume from the last
//! seen resourceVersion when the connection ends, and relist when the server answers 410 Gone.
//!
//! A (re)list is streamed as kube-rs' watcher streams it: [`Event::Init`], one
//! [`Event::InitApply`] per object as each page arrives, then [`Event::InitDone`]; nothing
//! buffers the whole list. Consumers that act on whole sets use [`batched`].

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
    /// A (re)list begins: the objects up to [`Event::InitDone`] replace every object seen
    /// before.
    Init,
    /// One object of the (re)list.
    InitApply(K),
    /// The (re)list is complete.
    InitDone,
}

/// What [`batched`] reports: a (re)list as one set.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch<K> {
    /// An object was added or changed.
    Applied(K),
    /// An object was deleted (its last state).
    Deleted(K),
    /// A full (re)list: this is now the complete set of objects.
    Relisted(Vec<K>),
}

/// Gathers each (re)list of `events` into one [`Batch::Relisted`], for consumers that act on
/// whole sets (a proxy's first sync must see every service). A list cut short by an error
/// is dropped; the watcher lists again.
pub fn batched<K: Send + 'static>(
    events: impl Stream<Item = Result<Event<K>>> + Send + 'static,
) -> impl Stream<Item = Result<Batch<K>>> + Send {
    futures::stream::unfold(
        (events.boxed(), None::<Vec<K>>),
        |(mut events, mut list)| async move {
            loop {
                let out = match events.next().await? {
                    Ok(Event::Applied(o)) => Ok(Batch::Applied(o)),
                    Ok(Event::Deleted(o)) => Ok(Batch::Deleted(o)),
                    Ok(Event::Init) => {
                        list = Some(Vec::new());
                        continue;
                    }
                    Ok(Event::InitApply(o)) => {
                        list.get_or_insert_with(Vec::new).push(o);
                        continue;
                    }
                    Ok(Event::InitDone) => Ok(Batch::Relisted(list.take().unwrap_or_default())),
                    Err(e) => {
                        list = None;
                        Err(e)
                    }
                };
                return Some((out, (events, list)));
            }
        },
    )
}

/// Seconds a single watch connection asks the server to stay open (client-go picks 5-10 min).
const WATCH_TIMEOUT_SECONDS: u32 = 290;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const LIST_PAGE: u32 = 500;

enum State<K> {
    /// Needs a (re)list.
    Empty,
    /// Listing: the next page is after `continue_token` (`None`: the first page).
    Listing { continue_token: Option<String> },
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
    /// Objects of the current list page not reported yet.
    page: std::vec::IntoIter<K>,
    /// The list is complete: [`Event::InitDone`] follows the page's objects.
    done_pending: bool,
}

impl<K: Object> Machine<K> {
    fn fail(&mut self) {
        let next = self
            .backoff
            .map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
        self.backoff = Some(next);
    }
}

impl<K: Object> Machine<K> {
    /// Advances until there is something to report.
    async fn step(&mut self) -> Result<Event<K>> {
        loop {
            if let Some(o) = self.page.next() {
                return Ok(Event::InitApply(o));
            }
            if std::mem::take(&mut self.done_pending) {
                return Ok(Event::InitDone);
            }
            if let Some(b) = self
                .backoff
                .filter(|_| !matches!(self.state, State::Watching { .. } | State::Listing { .. }))
            {
                tokio::time::sleep(b).await;
            }
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => {
                    self.state = State::Listing {
                        continue_token: None,
                    };
                    return Ok(Event::Init);
                }
                State::Listing { continue_token } => {
                    let mut lp = self.lp.clone();
                    lp.limit = Some(LIST_PAGE);
                    lp.continue_token = continue_token;
                    match self.api.list(&lp).await {
                        Ok(page) => {
                            self.page = page.items.into_iter();
                            match page.continue_token {
                                Some(c) => {
                                    self.state = State::Listing {
                                        continue_token: Some(c),
                                    }
                                }
                                None => {
                                    let rv = page.resource_version;
                                    tracing::debug!(resource = self.api.resource().plural, %rv, "listed");
                                    self.backoff = None;
                                    self.state = State::Listed { rv };
                                    // The page's objects first, then the end of the list.
                                    self.done_pending = true;
                                }
                            }
                        }
                        Err(e) => {
                            // Start over (an expired continue token cannot be resumed).
                            self.fail();
                            return Err(e);
                        }
                    }
                }
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
/// goes on (with exponential backoff); on 410 Gone it relists (`Init`, `InitApply`...,
/// `InitDone`).
pub fn watcher<K: Object>(
    api: Api<K>,
    lp: ListParams,
) -> impl Stream<Item = Result<Event<K>>> + Send {
    let m = Machine {
        api,
        lp,
        state: State::Empty,
        backoff: None,
        page: Vec::new().into_iter(),
        done_pending: false,
    };
    futures::stream::unfold(m, |mut m| async move {
        let r = m.step().await;
        Some((r, m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batched_gathers_each_list_and_drops_one_cut_short() {
        let events: Vec<Result<Event<u32>>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(1)),
            Ok(Event::InitApply(2)),
            Ok(Event::InitDone),
            Ok(Event::Applied(3)),
            Ok(Event::Init),
            Ok(Event::InitApply(4)),
            Err(Error::Invalid("connection lost".into())),
            Ok(Event::Init),
            Ok(Event::InitApply(5)),
            Ok(Event::InitDone),
            Ok(Event::Deleted(5)),
        ];
        let got: Vec<_> = batched(futures::stream::iter(events))
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                Ok(Batch::Relisted(vec![1, 2])),
                Ok(Batch::Applied(3)),
                Err("connection lost".to_string()),
                Ok(Batch::Relisted(vec![5])),
                Ok(Batch::Deleted(5)),
            ]
        );
    }
}
