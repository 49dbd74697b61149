//! `xkube dns` against an in-process apiserver: Services, EndpointSlices and Pods are created
//! through the API, and the server is queried over UDP and TCP on loopback with hickory's
//! client.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_server::net::client::{Client as DnsClient, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, Name, Record, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use xkube_apiserver::testing::TestServer;
use xkube_client::{Api, Client, Config, DeleteParams};

/// A DNS answer, reduced to what the tests compare.
#[derive(Debug)]
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn data(&self) -> Vec<String> {
        let mut v: Vec<String> = self.answers.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        v
    }
}

async fn query(server: SocketAddr, tcp: bool, name: &str, t: RecordType) -> Reply {
    let provider = TokioRuntimeProvider::default();
    let mut client = if tcp {
        let (connect, handle) = TcpClientStream::new(server, None, None, provider);
        let stream = connect.await.expect("TCP connection to the DNS server");
        let (c, bg) = DnsClient::<TokioRuntimeProvider>::new(stream, handle);
        tokio::spawn(bg);
        c
    } else {
        let stream = UdpClientStream::builder(server, provider).build();
        let (c, bg) = DnsClient::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(bg);
        c
    };
    let name = Name::from_str(name).expect("query name");
    let resp = client
        .query(name.clone(), DNSClass::IN, t)
        .await
        .unwrap_or_else(|e| panic!("query {name} {t}: {e}"));
    Reply {
        rcode: resp.metadata.response_code,
        authoritative: resp.metadata.authoritative,
        answers: resp.answers.clone(),
        authorities: resp.authorities.clone(),
        additionals: resp.additionals.clone(),
    }
}

async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    xkube_apiserver::testing::eventually(what, Duration::from_secs(20), f).await
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("object literal")
}

fn slice(name: &str, svc: &str, endpoints: serde_json::Value) -> EndpointSlice {
    obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_services_endpoints_and_pods_over_udp_and_tcp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path().join("apiserver"))
        .memory()
        .start()
        .await
        .expect("apiserver starts");
    let url = server.http_url().expect("http listener");
    let client = Client::new(&Config::new(url)).expect("client");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&obj(json!({"metadata": {"name": "other"}})))
        .await
        .expect("namespace other");
    let svcs = |ns: &str| Api::<Service>::namespaced(client.clone(), ns);
    let web = svcs("default")
        .create(&obj(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"name": "syslog", "port": 514, "protocol": "UDP"}],
                     "selector": {"app": "web"}}
        })))
        .await
        .expect("service web");
    let web_ip = web
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("web has a ClusterIP");
    let api = svcs("other")
        .create(&obj(json!({
            "metadata": {"name": "api"},
            "spec": {"ports": [{"port": 443}]}
        })))
        .await
        .expect("service api");
    let api_ip = api
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("api has a ClusterIP");
    svcs("default")
        .create(&obj(json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        })))
        .await
        .expect("headless service db");
    svcs("default")
        .create(&obj(json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "www.example.com"}
        })))
        .await
        .expect("ExternalName service ext");
    // db-1 names its endpoint through its pod (hostname + subdomain), db-0 through the slice,
    // 10.244.1.7 is not ready.
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&obj(json!({
            "metadata": {"name": "db-1"},
            "spec": {"hostname": "db-1", "subdomain": "db",
                     "containers": [{"name": "c", "image": "postgres"}]}
        })))
        .await
        .expect("pod db-1");
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default");
    slices
        .create(&slice(
            "db-abc",
            "db",
            json!([
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "namespace": "default", "name": "db-1"}},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": false}}
            ]),
        ))
        .await
        .expect("slice of db");

    let shutdown = CancellationToken::new();
    let opts = xkube_dns::Options {
        bind: "127.0.0.1:0".parse().expect("addr"),
        metrics_bind: "127.0.0.1:0".parse().expect("addr"),
        ..xkube_dns::Options::default()
    };
    let dns = xkube_dns::serve(&opts, client.clone(), &shutdown)
        .await
        .expect("dns serves");
    assert_eq!(dns.udp.port(), dns.tcp.port(), "UDP and TCP share a port");
    let (udp, tcp) = (dns.udp, dns.tcp);

    for over_tcp in [false, true] {
        let q = |name: &'static str, t| query(if over_tcp { tcp } else { udp }, over_tcp, name, t);

        let r = q("web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert!(
            r.authoritative,
            "the cluster zone is answered authoritatively"
        );
        assert_eq!(r.data(), vec![web_ip.clone()]);
        let r = q("API.other.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.data(), vec![api_ip.clone()], "names are case-insensitive");

        let r = q("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).await;
        assert_eq!(r.data(), vec!["0 100 80 web.default.svc.cluster.local."]);
        let r = q(
            "_syslog._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(r.data(), vec!["0 100 514 web.default.svc.cluster.local."]);
        assert_eq!(
            q("_443._tcp.api.other.svc.cluster.local.", RecordType::SRV)
                .await
                .rcode,
            ResponseCode::NXDomain,
            "unnamed ports have no SRV"
        );

        let rev = format!("{}.in-addr.arpa.", {
            let mut o: Vec<&str> = web_ip.split('.').collect();
            o.reverse();
            o.join(".")
        });
        let r = query(
            if over_tcp { tcp } else { udp },
            over_tcp,
            &rev,
            RecordType::PTR,
        )
        .await;
        assert_eq!(r.data(), vec!["web.default.svc.cluster.local."]);

        let r = q("db.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            r.data(),
            vec!["10.244.1.5", "10.244.1.6"],
            "ready endpoints only"
        );
        let r = q("db-0.db.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.data(), vec!["10.244.1.5"]);
        let r = q("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV).await;
        assert_eq!(
            r.data(),
            vec![
                "0 50 5432 db-0.db.default.svc.cluster.local.",
                "0 50 5432 db-1.db.default.svc.cluster.local.",
            ],
            "one SRV per endpoint, aimed at its hostname (db-1's from its pod)"
        );
        assert_eq!(r.additionals.len(), 2, "the targets' A records: {r:?}");
        let r = q("6.1.244.10.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(r.data(), vec!["db-1.db.default.svc.cluster.local."]);

        let r = q("ext.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert_eq!(r.data(), vec!["www.example.com."]);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);

        let r = q("10-244-3-4.default.pod.cluster.local.", RecordType::A).await;
        assert_eq!(r.data(), vec!["10.244.3.4"]);

        let r = q("nope.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.rcode, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert!(
            r.authorities
                .iter()
                .any(|a| a.record_type() == RecordType::SOA
                    && a.name.to_string() == "cluster.local."),
            "NXDOMAIN carries the zone's SOA: {r:?}"
        );
        let r = q("web.default.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!(r.rcode, ResponseCode::NoError, "the name exists");
        assert!(r.answers.is_empty());
        assert!(
            r.authorities
                .iter()
                .any(|a| a.record_type() == RecordType::SOA)
        );
        let r = q("default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.rcode, ResponseCode::NoError, "a namespace with services");

        let r = q("dns-version.cluster.local.", RecordType::TXT).await;
        assert_eq!(r.data(), vec![xkube_dns::records::SCHEMA_VERSION]);

        let r = q("www.example.com.", RecordType::A).await;
        assert_eq!(
            r.rcode,
            ResponseCode::Refused,
            "no upstreams: names outside the cluster domain are refused"
        );
    }

    // An endpoint removed from the slice leaves the headless answer.
    let mut s = slices.get("db-abc").await.expect("slice");
    s.endpoints.retain(|e| e.addresses != ["10.244.1.5"]);
    slices.replace("db-abc", &s).await.expect("slice updated");
    eventually("10.244.1.5 leaves db's answer", || async {
        let r = query(udp, false, "db.default.svc.cluster.local.", RecordType::A).await;
        (r.data() == vec!["10.244.1.6"]).then_some(())
    })
    .await;
    let r = query(
        udp,
        false,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(r.rcode, ResponseCode::NXDomain);

    // The last ready endpoint gone: the headless name is NXDOMAIN (the spec's rule).
    slices
        .delete("db-abc", &DeleteParams::default())
        .await
        .expect("slice deleted");
    eventually("db without endpoints is NXDOMAIN", || async {
        let r = query(tcp, true, "db.default.svc.cluster.local.", RecordType::A).await;
        (r.rcode == ResponseCode::NXDomain).then_some(())
    })
    .await;

    // A deleted service disappears; a new one appears.
    svcs("other")
        .delete("api", &DeleteParams::default())
        .await
        .expect("api deleted");
    eventually("api leaves", || async {
        let r = query(udp, false, "api.other.svc.cluster.local.", RecordType::A).await;
        (r.rcode == ResponseCode::NXDomain).then_some(())
    })
    .await;

    // The metrics endpoint counts what was asked.
    let text = reqwest::get(format!("http://{}/metrics", dns.metrics_addr))
        .await
        .expect("metrics scrape")
        .text()
        .await
        .expect("metrics body");
    for want in [
        "xkube_dns_requests_total{proto=\"tcp\",type=\"SRV\"} 4\n",
        "xkube_dns_responses_total{rcode=\"REFUSED\"} 2\n",
        "xkube_dns_request_duration_seconds_count",
        "xkube_dns_cache_hits_total",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(dns.metrics.queries() > 30);
    let ready = reqwest::get(format!("http://{}/ready", dns.metrics_addr))
        .await
        .expect("ready");
    assert!(ready.status().is_success());

    shutdown.cancel();
    dns.wait().await;
    server.stop().await;
}
