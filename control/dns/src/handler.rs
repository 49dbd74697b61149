//! hickory's side: the served zones as [`ZoneHandler`]s over the record table, in a
//! [`Catalog`] (which answers EDNS, builds authoritative answers, puts the SOA in the
//! authority section of NXDOMAIN and NODATA answers and refuses names of no zone), and the
//! [`RequestHandler`] in front of it that measures every query.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name, RecordType, TSigResponseContext};
use hickory_server::server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneType,
};

use crate::metrics::Metrics;
use crate::table::{Answer, Table};

/// The record table as the feed (one writer) and the zone handlers (readers) share it.
#[derive(Clone)]
pub struct Records(Arc<RwLock<Table>>);

impl Records {
    pub fn new(table: Table) -> Self {
        Records(Arc::new(RwLock::new(table)))
    }

    /// Reads the table; a poisoned lock only means a writer panicked between whole-owner
    /// updates, and the table is consistent at every owner boundary.
    pub fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the table as its writer.
    pub fn write<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        let mut t = self.0.write().unwrap_or_else(|e| e.into_inner());
        f(&mut t)
    }
}

/// One zone served from the table: the cluster domain or a reverse zone (`in-addr.arpa.`).
pub struct TableZone {
    origin: LowerName,
    records: Records,
    metrics: Arc<Metrics>,
    /// Unknown names are left to the next handler (an upstream forwarder) instead of being
    /// NXDOMAIN: CoreDNS's `fallthrough in-addr.arpa ip6.arpa`.
    fallthrough: bool,
}

impl TableZone {
    pub fn new(origin: &Name, records: Records, metrics: Arc<Metrics>, fallthrough: bool) -> Self {
        TableZone {
            origin: LowerName::new(origin),
            records,
            metrics,
            fallthrough,
        }
    }

    fn answer(
        &self,
        name: &LowerName,
        rtype: RecordType,
        opts: LookupOptions,
        count: bool,
    ) -> LookupControlFlow<AuthLookup> {
        let answer = self.records.read().lookup(name, rtype);
        if count {
            self.metrics.table(matches!(answer, Answer::Records { .. }));
        }
        match answer {
            Answer::Records {
                answers,
                additionals,
            } => {
                let additionals =
                    (!additionals.is_empty()).then(|| LookupRecords::many(opts, additionals));
                LookupControlFlow::Break(Ok(AuthLookup::answers(
                    LookupRecords::many(opts, answers),
                    additionals,
                )))
            }
            Answer::NoData => LookupControlFlow::Break(Err(LookupError::NameExists)),
            Answer::NxDomain if self.fallthrough => LookupControlFlow::Skip,
            Answer::NxDomain => {
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::NXDomain)))
            }
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for TableZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // The catalog's own lookups (the SOA for a negative answer, NS for an SOA answer).
        self.answer(name, rtype, lookup_options, false)
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(i) => i,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let q = info.query;
        (
            self.answer(q.name(), q.query_type(), lookup_options, true),
            None,
        )
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // The zones are not signed: no NSEC records.
        LookupControlFlow::Break(Ok(AuthLookup::default()))
    }
}

/// The catalog behind a measuring front: every query's type, rcode and latency.
pub struct Measured {
    pub catalog: Catalog,
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl RequestHandler for Measured {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let info = self
            .catalog
            .handle_request::<R, T>(request, response_handle)
            .await;
        let qtype = request
            .queries
            .queries()
            .first()
            .map(|q| q.query_type())
            .unwrap_or(RecordType::Unknown(0));
        self.metrics.query(
            request.protocol() == Protocol::Tcp,
            qtype,
            info.response_code,
            start.elapsed(),
        );
        info
    }
}
