//! Stand-ins for the node-side components that the test clusters do not run.
//!
//! No kubelet or scheduler runs in a test cluster, so pods stay `Pending` forever. Tests of
//! kpromote need pods that look like a user's running pods — bound to a node, `Running`, with
//! container statuses and restart counts — so [`FakeKubelet`] binds them (the scheduler's part,
//! through the `binding` subresource) and reports them running (the kubelet's part, through the
//! `status` subresource). kpromote's own code never depends on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::TestEnvError;
use kpromote_model::kosmos;

/// Field manager of the test helpers' writes, so they are recognisable in managedFields.
const MANAGER: &str = "kpromote-testenv";

/// Registers the Kosmos virtual node that stands for member cluster `cluster_name` in a control
/// plane: `kosmos-<clusterName>`, label `kosmos.io/node=true`, taint
/// `kosmos.io/node=true:NoSchedule`, annotation `kosmos-io/owned-by-cluster`, condition Ready.
///
/// # Errors
/// The API server's refusal.
pub async fn register_virtual_node(client: &Client, cluster_name: &str) -> Result<Node, TestEnvError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = kosmos::virtual_node_name(cluster_name);
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": { kosmos::NODE_KEY: kosmos::NODE_VALUE, "kubernetes.io/hostname": name },
            "annotations": { kosmos::OWNED_BY_CLUSTER_ANNOTATION: cluster_name },
        },
        "spec": { "taints": [{
            "key": kosmos::NODE_KEY, "value": kosmos::NODE_VALUE, "effect": kosmos::NODE_TAINT_EFFECT,
        }] },
    }))
    .map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
    nodes.create(&PostParams::default(), &node).await?;
    set_node_ready(&nodes, &name).await
}

async fn set_node_ready(nodes: &Api<Node>, name: &str) -> Result<Node, TestEnvError> {
    let now = Time(jiff::Timestamp::now());
    let status = json!({ "status": { "conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }] } });
    Ok(nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?)
}

/// The namespace of the nodes' heartbeat Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// A kubelet's lease: valid this long, renewed four times as often.
const LEASE_SECONDS: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Keeps a node's heartbeat Lease (`kube-node-lease/<node>`) fresh, as a kubelet does, so a
/// control plane running the node-lifecycle controller (the production
/// [`Profile`](crate::Profile)) sees the node alive and never taints it or evicts its pods.
/// Renewal runs on the caller's Tokio runtime until this is dropped.
#[derive(Debug)]
pub struct NodeLease {
    task: tokio::task::JoinHandle<()>,
}

impl NodeLease {
    /// Creates or renews the Lease of `node` now (owned by the Node, as a kubelet's is), then
    /// every 10 s. A failed renewal is logged and tried again at the next tick.
    ///
    /// # Errors
    /// The API server's refusal of the first renewal (a missing Node, for instance).
    pub async fn keep(client: &Client, node: &str) -> Result<Self, TestEnvError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let uid = nodes.get(node).await?.metadata.uid.unwrap_or_default();
        let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
        renew(&leases, node, &uid).await?;
        let node = node.to_owned();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Err(err) = renew(&leases, &node, &uid).await {
                    tracing::warn!(node, error = %err, "node lease not renewed");
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Server-side applies the Lease with the current time: creates it the first time.
async fn renew(leases: &Api<Lease>, node: &str, node_uid: &str) -> Result<(), TestEnvError> {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid }],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(jiff::Timestamp::now()),
        },
    });
    leases
        .patch(node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease))
        .await?;
    Ok(())
}

/// Plays scheduler and kubelet for one node of a test cluster, and keeps its lease.
#[derive(Clone)]
pub struct FakeKubelet {
    client: Client,
    node: String,
    _lease: Arc<NodeLease>,
}

impl std::fmt::Debug for FakeKubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKubelet")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl FakeKubelet {
    /// Registers node `node` (Ready) and returns its kubelet, which keeps the node's lease
    /// ([`NodeLease`]) until its last clone is dropped. An existing node is reused.
    ///
    /// # Errors
    /// The API server's refusal.
    pub async fn register(client: &Client, node: &str) -> Result<Self, TestEnvError> {
        let nodes: Api<Node> = Api::all(client.clone());
        if nodes.get_opt(node).await?.is_none() {
            let object = Node {
                metadata: ObjectMeta {
                    name: Some(node.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "kubernetes.io/hostname".to_owned(),
                        node.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            };
            nodes.create(&PostParams::default(), &object).await?;
        }
        set_node_ready(&nodes, node).await?;
        let lease = NodeLease::keep(client, node).await?;
        Ok(Self {
            client: client.clone(),
            node: node.to_owned(),
            _lease: Arc::new(lease),
        })
    }

    /// The node's name.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Binds every unbound pod of `namespace` matching `selector` (a label selector, `""` for all)
    /// to this node, and reports every pod bound here and not yet running as `Running` and
    /// `Ready` with one running container status per container, restart count 0. Returns how
    /// many pods it started.
    ///
    /// # Errors
    /// The API server's refusal.
    pub async fn start_pods(&self, namespace: &str, selector: &str) -> Result<usize, TestEnvError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut started = 0;
        for pod in pods.list(&ListParams::default().labels(selector)).await? {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            match node {
                None => self.bind(&pods, namespace, &name).await?,
                Some(n) if n != self.node => continue,
                Some(_) => {}
            }
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if !running {
                self.report_running(&pods, &pod, started).await?;
                started += 1;
            }
        }
        Ok(started)
    }

    async fn bind(&self, pods: &Api<Pod>, namespace: &str, name: &str) -> Result<(), TestEnvError> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                ..ObjectReference::default()
            },
        };
        pods.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    async fn report_running(&self, pods: &Api<Pod>, pod: &Pod, seq: usize) -> Result<(), TestEnvError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": format!("fake://{}", c.image.as_deref().unwrap_or_default()),
                    "containerID": format!("fake://{uid}/{}", c.name),
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": { "running": { "startedAt": now } },
                })
            })
            .collect();
        let conditions: Vec<_> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|t| json!({ "type": t, "status": "True", "lastTransitionTime": now }))
            .collect();
        let ip = format!("10.244.{}.{}", (seq / 250) % 250, seq % 250 + 2);
        let status = json!({ "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": containers,
        } });
        pods.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&apply_body(&name, status)),
        )
        .await?;
        Ok(())
    }
}

/// A server-side-apply body for a pod's status.
fn apply_body(name: &str, mut status: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = status.as_object_mut() {
        obj.insert("apiVersion".into(), json!("v1"));
        obj.insert("kind".into(), json!("Pod"));
        obj.insert("metadata".into(), json!({ "name": name }));
    }
    status
}
