//! The backup's building blocks against a real kube-apiserver v1.35: discovery (and the committed
//! discovery fixture), and the paginated lister (page size, key order, continue token expiry).
//!
//! Needs the test environment binaries (`tests/testenv/build.sh`).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures::{StreamExt, TryStreamExt, stream};
use kpromote_core::backup::lister::{ListError, ListEvent, ListRequest, list_paged, list_raw, paginate};
use kpromote_core::resources::{ApiSurface, DiscoveryDocument, ExcludedResources, GroupResource, well_known};
use kpromote_testenv::Cluster;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use support::apps;

const FIXTURE: &str = "fixtures/discovery/kube-v1.35.json";
const THIRD_PARTY_CRDS: &str = "fixtures/discovery/third-party-crds.yaml";
const METRICS_OVERLAY: &str = "fixtures/discovery/metrics-server-v1beta1.json";
/// Set to `1` to rewrite the fixture from the real server instead of comparing.
const RECORD_ENV: &str = "KPROMOTE_RECORD_DISCOVERY";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// What the fixture records of a real server: its discovery responses after the third-party CRDs
/// are installed, plus the metrics-server group (an aggregated API server the test environment
/// cannot run), with the loopback address replaced by a stable one.
async fn recorded_document(client: &Client) -> DiscoveryDocument {
    let crds: Vec<Value> =
        serde_saphyr::from_str_multiple(&std::fs::read_to_string(repo_path(THIRD_PARTY_CRDS)).unwrap())
            .unwrap();
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
        apps::create(client, crd).await;
        let api: Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = Api::all(client.clone());
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            kube::runtime::wait::await_condition(api, &name, kube::runtime::conditions::is_crd_established()),
        )
        .await
        .unwrap()
        .unwrap();
    }
    // Discovery of CRD groups lags establishment by a moment.
    let mut doc = support::wait_for(
        "CRD groups in discovery",
        std::time::Duration::from_secs(60),
        || async {
            let doc = DiscoveryDocument::fetch(client).await.unwrap();
            let served: usize = doc
                .resource_lists
                .iter()
                .filter(|l| {
                    l.group_version.starts_with("cert-manager.io/")
                        || l.group_version.starts_with("monitoring.coreos.com/")
                })
                .map(|l| l.resources.iter().filter(|r| !r.name.contains('/')).count())
                .sum();
            (served == 14).then_some(doc)
        },
    )
    .await;
    assert!(doc.failures.is_empty(), "{:?}", doc.failures);
    let overlay: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path(METRICS_OVERLAY)).unwrap()).unwrap();
    doc.groups
        .groups
        .push(serde_json::from_value(overlay["group"].clone()).unwrap());
    doc.resource_lists
        .push(serde_json::from_value(overlay["resourceList"].clone()).unwrap());
    for address in &mut doc.core_versions.server_address_by_client_cidrs {
        address.server_address = "127.0.0.1:6443".into();
    }
    doc
}

/// The document with resource lists sorted by group version and resources by name: the API
/// server's order of CRD resources within a group is not part of what the fixture pins.
fn normalized(doc: &DiscoveryDocument) -> Value {
    let mut doc = doc.clone();
    doc.resource_lists
        .sort_by(|a, b| a.group_version.cmp(&b.group_version));
    for list in &mut doc.resource_lists {
        list.resources.sort_by(|a, b| a.name.cmp(&b.name));
    }
    serde_json::to_value(&doc).unwrap()
}

#[tokio::test]
async fn discovery_of_a_real_server_is_the_committed_fixture() {
    let cluster = Cluster::start("discovery").await.unwrap();
    let client = cluster.client().await.unwrap();
    let live = recorded_document(&client).await;

    if std::env::var(RECORD_ENV).is_ok_and(|v| v == "1") {
        let mut out = serde_json::Map::new();
        out.insert(
            "description".into(),
            json!(format!(
                "Discovery of a real kube-apiserver {} (tests/testenv, default feature gates) with the \
                 CRDs of {THIRD_PARTY_CRDS} installed, plus the metrics.k8s.io group of {METRICS_OVERLAY} \
                 (an aggregated API the test environment cannot serve). Recorded by \
                 `{RECORD_ENV}=1 cargo test --test backup_pieces discovery_of_a_real_server`; the test \
                 fails when the server and this file disagree.",
                live.server_version.clone().unwrap_or_default()
            )),
        );
        let Value::Object(body) = serde_json::to_value(&live).unwrap() else {
            panic!("a discovery document is a JSON object")
        };
        out.extend(body);
        let text = serde_json::to_string_pretty(&Value::Object(out)).unwrap() + "\n";
        std::fs::write(repo_path(FIXTURE), text).unwrap();
        eprintln!("recorded {FIXTURE}");
    }

    let committed: DiscoveryDocument =
        serde_json::from_str(&std::fs::read_to_string(repo_path(FIXTURE)).unwrap()).unwrap();
    let (live_n, committed_n) = (normalized(&live), normalized(&committed));
    if live_n != committed_n {
        let differing: Vec<String> = live
            .resource_lists
            .iter()
            .filter(|l| {
                let c = committed
                    .resource_lists
                    .iter()
                    .find(|c| c.group_version == l.group_version);
                c.is_none_or(|c| {
                    let mut a = serde_json::to_value(l).unwrap();
                    let mut b = serde_json::to_value(c).unwrap();
                    for v in [&mut a, &mut b] {
                        if let Some(r) = v["resources"].as_array_mut() {
                            r.sort_by_key(|x| x["name"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                    a != b
                })
            })
            .map(|l| l.group_version.clone())
            .collect();
        panic!(
            "{FIXTURE} is not what a real server serves (differing group versions: {differing:?}; \
             groups or server version may differ too). Re-record it with `{RECORD_ENV}=1 cargo test \
             --test backup_pieces discovery_of_a_real_server` and review the diff."
        );
    }

    // The surface built from live discovery is the one the unit tests build from the fixture.
    let surface = ApiSurface::from_document(&live);
    let from_fixture = ApiSurface::from_document(&committed);
    assert_eq!(surface.resources().len(), from_fixture.resources().len());
    assert_eq!(surface.server_version(), Some("v1.35.4"));
    let names = |s: &ApiSurface| -> Vec<String> {
        s.backup_types(&ExcludedResources::none())
            .iter()
            .map(|r| r.group_resource.to_string())
            .collect()
    };
    assert_eq!(names(&surface), names(&from_fixture));
    // `discover` itself (what a backup calls) agrees on the built-in types.
    let discovered = ApiSurface::discover(&client).await.unwrap();
    assert!(discovered.warnings().is_empty());
    for r in surface
        .resources()
        .iter()
        .filter(|r| r.group_resource.is_builtin())
    {
        assert_eq!(discovered.get(&r.group_resource), Some(r), "{}", r.group_resource);
    }
    let pods = discovered.get(&well_known::PODS).unwrap();
    assert!(pods.is_backup_candidate());
    assert_eq!(
        discovered.canonical(&well_known::EVENTS_EVENTS_K8S_IO),
        well_known::EVENTS
    );
}

/// The storage key order the lister assumes: `<namespace>/<name>` compared bytewise.
fn key(o: &DynamicObject) -> String {
    format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn create_configmaps(client: &Client, namespace: &str, names: impl IntoIterator<Item = String>) {
    stream::iter(names)
        .for_each_concurrent(16, |name| async move {
            apps::create(
                client,
                json!({ "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": { "name": name, "namespace": namespace }, "data": { "k": "v" } }),
            )
            .await;
        })
        .await;
}

async fn create_namespace(client: &Client, name: &str) {
    apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } }),
    )
    .await;
}

/// Names whose bytewise order differs from a naive or locale order: `-` and `.` sort before
/// digits, digits before letters, and `a-b/x` before `a/x` across namespaces.
fn tricky_names() -> Vec<String> {
    ["a", "a-b", "a.b", "a0", "a9", "aa", "b", "z", "0", "9-9"]
        .iter()
        .map(|n| (*n).to_owned())
        .collect()
}

fn configmaps(surface: &ApiSurface) -> ListRequest {
    ListRequest::new(surface.get(&GroupResource::new("", "configmaps")).unwrap())
}

#[tokio::test]
async fn the_lister_pages_a_real_server_in_key_order_and_survives_an_expired_token() {
    let cluster = Cluster::start("lister").await.unwrap();
    let client = cluster.client().await.unwrap();
    let surface = ApiSurface::discover(&client).await.unwrap();

    // Namespaces whose names sort differently as strings and as keys (`ord-b/` < `ord/`).
    for ns in ["ord", "ord-b", "ord0"] {
        create_namespace(&client, ns).await;
    }
    create_configmaps(&client, "ord", (0..300).map(|i| format!("cm-{i}"))).await;
    for ns in ["ord", "ord-b", "ord0"] {
        create_configmaps(&client, ns, tricky_names()).await;
    }
    let in_ord = 300 + tricky_names().len();
    // The controller manager adds `kube-root-ca.crt` to every namespace; wait for it so that the
    // lists below see a settled set.
    for ns in ["ord", "ord-b", "ord0"] {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
        support::wait_for("kube-root-ca.crt", std::time::Duration::from_secs(60), || async {
            cms.get_opt("kube-root-ca.crt").await.unwrap().map(|_| ())
        })
        .await;
    }

    // One namespace, page size 7: every object once, typed, in strictly increasing key order.
    let events: Vec<ListEvent> = list_paged(
        client.clone(),
        configmaps(&surface).in_namespace("ord").page_size(7),
    )
    .try_collect()
    .await
    .unwrap();
    let snapshots = events
        .iter()
        .filter(|e| matches!(e, ListEvent::Snapshot { .. }))
        .count();
    assert_eq!(snapshots, 1);
    assert!(
        matches!(&events[0], ListEvent::Snapshot { resource_version: Some(rv), restarts: 0 } if !rv.is_empty())
    );
    let objects: Vec<&DynamicObject> = events
        .iter()
        .filter_map(|e| match e {
            ListEvent::Object(o) => Some(o.as_ref()),
            ListEvent::Snapshot { .. } => None,
        })
        .collect();
    // kube-root-ca.crt is made by the controller manager in every namespace.
    assert_eq!(objects.len(), in_ord + 1);
    let keys: Vec<String> = objects.iter().map(|o| key(o)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "not in key order: {keys:?}");
    for o in &objects {
        let types = o.types.as_ref().unwrap();
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("v1", "ConfigMap")
        );
    }

    // The raw lister (what the backup uses) yields the same objects, byte for byte as the server
    // encoded them plus the type fields, in the same order.
    let raw: Vec<(String, serde_json::Value)> = list_raw(
        client.clone(),
        configmaps(&surface).in_namespace("ord").page_size(7),
    )
    .try_filter_map(|e| async move {
        Ok(match e {
            ListEvent::Object(o) => {
                let value: serde_json::Value = serde_json::from_slice(o.json()).unwrap();
                let key = format!(
                    "{}/{}",
                    value["metadata"]["namespace"].as_str().unwrap(),
                    value["metadata"]["name"].as_str().unwrap()
                );
                Some((key, value))
            }
            ListEvent::Snapshot { .. } => None,
        })
    })
    .try_collect()
    .await
    .unwrap();
    assert_eq!(raw.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), keys);
    for ((_, value), typed) in raw.iter().zip(&objects) {
        assert_eq!(
            (value["apiVersion"].as_str(), value["kind"].as_str()),
            (Some("v1"), Some("ConfigMap"))
        );
        assert_eq!(value, &serde_json::to_value(typed).unwrap());
    }

    // Cluster-wide, across the namespaces: still key order (`ord-b/…` before
    // `ord/…` before `ord0/…`), which is what a resume after expiry depends on.
    let all: Vec<String> = list_paged(client.clone(), configmaps(&surface).page_size(13))
        .try_filter_map(|e| async move {
            Ok(match e {
                ListEvent::Object(o) => Some(key(&o)),
                ListEvent::Snapshot { .. } => None,
            })
        })
        .try_collect()
        .await
        .unwrap();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "not in key order: {all:?}");
    let first_of = |ns: &str| all.iter().position(|k| k.starts_with(&format!("{ns}/"))).unwrap();
    assert!(
        first_of("ord-b") < first_of("ord"),
        "`ord-b/` sorts before `ord/` as a key"
    );
    assert!(first_of("ord") < first_of("ord0"));

    // An expired continue token, from the real server. The watch cache keeps list snapshots
    // alive long after etcd compacts them, so a genuine token does not expire within a test;
    // instead the second page is requested with a token for a revision that etcd has compacted
    // (what a token looks like after minutes of a slow consumer). The server answers 410 Expired
    // and the lister must restart and still yield every object exactly once.
    compact_etcd(&cluster).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "ord", &configmaps_resource(&surface));
    let mut pages = 0;
    let fetch = move |params: ListParams| {
        pages += 1;
        let api = api.clone();
        let params = if pages == 3 {
            let token = params.continue_token.clone().unwrap();
            params.continue_token(&expired_twin(&token))
        } else {
            params
        };
        async move { api.list(&params).await }
    };
    let events: Vec<ListEvent> = paginate(configmaps(&surface).in_namespace("ord").page_size(50), fetch)
        .try_collect()
        .await
        .unwrap();
    let restarts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            ListEvent::Snapshot { restarts, .. } => Some(*restarts),
            ListEvent::Object(_) => None,
        })
        .collect();
    assert_eq!(restarts, [0, 1], "one restart after the 410");
    let keys: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ListEvent::Object(o) => Some(key(o)),
            ListEvent::Snapshot { .. } => None,
        })
        .collect();
    assert_eq!(keys.len(), in_ord + 1, "each object exactly once");
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len());
    assert!(keys.windows(2).all(|w| w[0] < w[1]));

    // A token that keeps expiring gives up with a named error.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "ord", &configmaps_resource(&surface));
    let fetch = move |params: ListParams| {
        let api = api.clone();
        let params = match params.continue_token.clone() {
            Some(token) => params.continue_token(&expired_twin(&token)),
            None => params,
        };
        async move { api.list(&params).await }
    };
    let result: Result<Vec<ListEvent>, ListError> = paginate(
        configmaps(&surface)
            .in_namespace("ord")
            .page_size(50)
            .max_restarts(2),
        fetch,
    )
    .try_collect()
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, ListError::ExpiredTooOften { restarts: 2, .. }),
        "{err}"
    );
}

fn configmaps_resource(surface: &ApiSurface) -> kube::api::ApiResource {
    surface
        .get(&GroupResource::new("", "configmaps"))
        .unwrap()
        .api_resource()
}

/// The same continue token (same start key) for resource version 2, long compacted.
fn expired_twin(token: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = engine.decode(token.trim_end_matches('=')).unwrap();
    let mut body: Value = serde_json::from_slice(&bytes).unwrap();
    body["rv"] = json!(2);
    engine.encode(serde_json::to_vec(&body).unwrap())
}

/// Compacts the cluster's etcd at its current revision (the API server would do it every five
/// minutes), through etcd's HTTP gateway. The etcd URL is read from the etcd process's command
/// line, found by the cluster's data directory.
async fn compact_etcd(cluster: &Cluster) {
    let data_dir = format!("--data-dir={}", cluster.dir().join("etcd").display());
    let url = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| {
            raw.split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        })
        .filter(|args| args.first().is_some_and(|a| a.ends_with("/etcd")) && args.contains(&data_dir))
        .find_map(|args| {
            args.iter()
                .find_map(|a| a.strip_prefix("--listen-client-urls=").map(str::to_owned))
        })
        .expect("the cluster's etcd process");
    let address = url.trim_start_matches("http://").to_owned();
    let header = etcd_post(&address, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    let revision = header["header"]["revision"].as_str().unwrap().to_owned();
    let done = etcd_post(
        &address,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )
    .await;
    assert!(done.get("header").is_some(), "{done}");
}

/// One HTTP/1.1 POST to etcd's JSON gateway.
async fn etcd_post(address: &str, path: &str, body: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    // The gateway may answer chunked: take the JSON object in the body.
    let start = rest.find('{').unwrap();
    let end = rest.rfind('}').unwrap();
    serde_json::from_str(&rest[start..=end]).unwrap()
}
