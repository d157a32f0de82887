//! The test scenarios build in a real member cluster as documented (a guard for the fixtures
//! the engine and backup tests rely on).
#![allow(clippy::unwrap_used)]

mod support;

use kpromote_testenv::{Cluster, FakeKubelet};
use support::apps;

#[tokio::test]
async fn rich_namespace_builds_with_the_real_controllers() {
    let member = Cluster::start("member").await.unwrap();
    let client = member.client().await.unwrap();
    let kubelet = FakeKubelet::register(&client, "member-node-1").await.unwrap();
    apps::create(&client, apps::shared_reader_cluster_role()).await;
    apps::rich_namespace(&client, &kubelet, "shop", 30080).await;
    let snap = apps::snapshot(&client, "shop").await;
    // web 3 + rolling 2+1 + db 2 + shop 1 + lonely 1
    assert_eq!(snap.pods.len(), 10, "{:#?}", snap.pods);
    // web 1, rolling 2, shop 1
    assert_eq!(snap.replicasets.len(), 4, "{:#?}", snap.replicasets);
    assert!(
        !snap.revisions.is_empty(),
        "the StatefulSet has a ControllerRevision"
    );
    assert!(snap.pods.values().all(|(_, restarts, _)| *restarts == 0));
    // In the member, the controllers made the ReplicaSets, Pods and revisions.
    assert!(
        snap.controller_created
            .iter()
            .any(|n| n.starts_with("replicaset/web-")),
        "{:?}",
        snap.controller_created
    );
}
