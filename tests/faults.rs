//! Faults a busy production control plane produces every day, against real clusters: throttling
//! with `Retry-After`, an API server unavailable for seconds, dropped connections (through a
//! proxy of our own), and a garbage collector that falls behind. Promote and rollback ride them
//! out without rolling back and count what they retried.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Toleration};
use kpromote_core::engine::{EngineOptions, Inventory, LiveCluster};
use kpromote_model::ObjectKey;
use kube::Api;
use kube::api::ListParams;
use support::faults::{FaultProxy, Faults, Refusal};
use support::pair::Pair;
use support::promotion::{Promotion, damage_frames, frames};
use support::{apps, wait_for, wait_namespace_gone};

#[tokio::test]
async fn promote_and_rollback_ride_out_throttling_outages_and_dropped_connections() {
    let pair = Pair::start().await;
    let ns = "shop";
    apps::create(&pair.cp, apps::shared_reader_cluster_role()).await;
    apps::create(&pair.member, apps::shared_reader_cluster_role()).await;
    apps::rich_namespace(&pair.member, &pair.kubelet, ns, 30482).await;
    let before = apps::snapshot(&pair.member, ns).await;
    let run = Promotion::archive_rich(&pair, ns).await;

    // 429 with Retry-After on every 7th request, a dropped connection on every 13th, and a 12 s
    // outage (503) opened by the first DELETE in the member (detach) and by the first POST
    // (restore) and DELETE (teardown) in the control plane.
    let faults = |outage_on| Faults {
        throttle_every: 7,
        drop_every: 13,
        outage_on,
        unavailable: Duration::from_secs(12),
        ..Faults::default()
    };
    let member_proxy = FaultProxy::start(pair.member.clone(), faults(vec!["DELETE"])).await;
    let cp_proxy = FaultProxy::start(pair.cp.clone(), faults(vec!["POST", "DELETE"])).await;
    let run = run.through(member_proxy.client(), cp_proxy.client());
    let opts = EngineOptions::default();

    let report = run
        .promote(&opts)
        .await
        .unwrap_or_else(|e| panic!("promote under faults: {e}"));
    let (throttled, unavailable, dropped) = member_proxy.counts();
    let (cp_throttled, cp_unavailable, cp_dropped) = cp_proxy.counts();
    assert!(
        throttled > 0 && unavailable > 0 && dropped > 0,
        "member faults {:?}",
        member_proxy.counts()
    );
    assert!(
        cp_throttled > 0 && cp_unavailable > 0 && cp_dropped > 0,
        "cp faults {:?}",
        cp_proxy.counts()
    );
    // 429 and 503 are retried first inside the client (kube-rs honours the Retry-After header);
    // a dropped connection only by kpromote's own policy, which the report counts.
    assert!(
        report.retried_calls >= dropped + cp_dropped,
        "every dropped connection was retried: {} retried, {:?} + {:?} injected",
        report.retried_calls,
        member_proxy.counts(),
        cp_proxy.counts()
    );
    println!(
        "promote: {} calls retried; member faults {:?}, control-plane faults {:?}; step retries {:?}",
        report.retried_calls,
        member_proxy.counts(),
        cp_proxy.counts(),
        report.retried_steps
    );
    assert_eq!(apps::snapshot(&pair.member, ns).await.pods, before.pods);
    apps::snapshot(&pair.cp, ns)
        .await
        .assert_promoted_from(&before, "promote under faults");

    member_proxy.rearm().await;
    cp_proxy.rearm().await;
    let report = run
        .rollback("rollback.journal", &opts)
        .await
        .unwrap_or_else(|e| panic!("rollback under faults: {e}"));
    assert!(cp_proxy.counts().1 > cp_unavailable, "teardown met an outage");
    assert!(report.retried_calls > 0, "{report:#?}");
    println!(
        "rollback: {} calls retried; member faults {:?}, control-plane faults {:?}",
        report.retried_calls,
        member_proxy.counts(),
        cp_proxy.counts()
    );
    pair.assert_rolled_back(ns, &before, "rollback under faults")
        .await;
}

#[tokio::test]
async fn rollback_waits_for_an_owner_the_garbage_collector_has_not_finished_deleting() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let run = Promotion::archive(&pair, &[ns], &[]).await;

    // The member's garbage collector freezes: detach's orphan deletion of the Deployment stays
    // pending (deletionTimestamp set, the orphan finalizer on) past the detach wait.
    pair.env.cluster("member").pause_controller_manager().unwrap();
    let impatient = EngineOptions {
        gc_stall: Duration::from_secs(3),
        step_retries: 0,
        ..EngineOptions::default()
    };
    let err = run.promote_with(&impatient, false).await.unwrap_err();
    assert!(err.to_string().contains("garbage collector"), "{err}");
    let deployments: Api<Deployment> = Api::namespaced(pair.member.clone(), ns);
    let pending = deployments.get("nginx").await.unwrap();
    assert!(
        pending.metadata.deletion_timestamp.is_some(),
        "the Deployment is being deleted"
    );

    // The collector comes back while rollback runs: rollback waits for the old Deployment to be
    // gone, then re-creates it (counted as present, it would never come back).
    let resume = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        pair.env.cluster("member").resume_controller_manager().unwrap();
    };
    let defaults = EngineOptions::default();
    let (rolled, ()) = tokio::join!(run.rollback("rollback.journal", &defaults), resume);
    rolled.unwrap();
    let deployment = wait_for("the re-created Deployment", Duration::from_secs(60), || async {
        deployments
            .get_opt("nginx")
            .await
            .unwrap()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
    })
    .await;
    assert_ne!(deployment.metadata.uid, pending.metadata.uid, "a new Deployment");
    // Its ReplicaSet is adopted by the new Deployment, and the pod is the same pod.
    let uid = deployment.metadata.uid.clone().unwrap();
    wait_for("the ReplicaSet adopted", Duration::from_secs(60), || async {
        Api::<ReplicaSet>::namespaced(pair.member.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid)
            })
            .then_some(())
    })
    .await;
    pair.assert_rolled_back(ns, &before, "rollback after a slow garbage collector")
        .await;
}

#[tokio::test]
async fn rollback_refuses_to_discard_what_changed_in_the_control_plane_unless_told() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let run = Promotion::archive(&pair, &[ns], &[]).await;
    let opts = EngineOptions::default();
    run.promote_with(&opts, false).await.unwrap();

    // Work done in the control plane after promote: a new ConfigMap, an edited Deployment spec.
    apps::create(
        &pair.cp,
        serde_json::json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "notes", "namespace": ns }, "data": { "a": "b" } }),
    )
    .await;
    Api::<Deployment>::namespaced(pair.cp.clone(), ns)
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({ "spec": { "revisionHistoryLimit": 3 } })),
        )
        .await
        .unwrap();
    let member_pods = apps::snapshot(&pair.member, ns).await;

    let err = run.rollback("rollback.journal", &opts).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, kpromote_core::engine::EngineError::Drift { .. }),
        "{message}"
    );
    assert!(message.contains("configmaps/nginx-test/notes"), "{message}");
    assert!(message.contains("deployments.apps/nginx-test/nginx"), "{message}");
    assert!(message.contains("--discard-changes"), "{message}");
    // Nothing was touched: the member still runs without owners, the control plane keeps all.
    assert_eq!(apps::snapshot(&pair.member, ns).await, member_pods);
    assert!(
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(pair.cp.clone(), ns)
            .get_opt("notes")
            .await
            .unwrap()
            .is_some()
    );

    let discard = EngineOptions {
        discard_changes: true,
        ..EngineOptions::default()
    };
    let report = run.rollback("rollback.journal", &discard).await.unwrap();
    assert_eq!(report.discarded.len(), 2, "{:?}", report.discarded);
    pair.assert_rolled_back(ns, &before, "rollback discarding changes")
        .await;
}

#[tokio::test]
async fn restore_waits_for_a_frozen_controller_manager_instead_of_racing_it() {
    let pair = Pair::start().await;
    let ns = "shop";
    apps::create(&pair.cp, apps::shared_reader_cluster_role()).await;
    apps::create(&pair.member, apps::shared_reader_cluster_role()).await;
    apps::rich_namespace(&pair.member, &pair.kubelet, ns, 30483).await;
    let before = apps::snapshot(&pair.member, ns).await;
    let run = Promotion::archive_rich(&pair, ns).await;

    // The control plane's controller manager freezes before the restore and thaws 15 s later,
    // far past any fixed settle: a restore that guessed would create owners its controllers
    // have not seen the pods of, and they would make new pods. The barrier waits instead.
    pair.env
        .cluster("control-plane")
        .pause_controller_manager()
        .unwrap();
    let thaw = async {
        tokio::time::sleep(Duration::from_secs(15)).await;
        pair.env
            .cluster("control-plane")
            .resume_controller_manager()
            .unwrap();
    };
    let defaults = EngineOptions::default();
    let (promoted, ()) = tokio::join!(run.promote_with(&defaults, false), thaw);
    promoted.unwrap();
    // The barrier's sentinels go (the garbage collector takes what the sentinel owners made).
    let sentinels = ListParams::default().labels(kpromote_core::engine::barrier::SENTINEL_LABEL);
    wait_for(
        "the barrier's sentinels to be gone",
        Duration::from_secs(60),
        || async {
            let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(pair.cp.clone(), ns)
                .list(&sentinels)
                .await
                .unwrap();
            let revisions =
                Api::<k8s_openapi::api::apps::v1::ControllerRevision>::namespaced(pair.cp.clone(), ns)
                    .list(&sentinels)
                    .await
                    .unwrap();
            (pods.items.is_empty() && revisions.items.is_empty()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    apps::snapshot(&pair.cp, ns)
        .await
        .assert_promoted_from(&before, "restore against a frozen controller manager");
    assert_eq!(apps::snapshot(&pair.member, ns).await.pods, before.pods);
}

#[tokio::test]
async fn the_barrier_before_deployments_waits_for_the_deployment_controller_and_leaves_nothing() {
    use kpromote_core::engine::barrier::{Needs, SENTINEL_LABEL, observe};
    let pair = Pair::start().await;
    let ns = "barrier";
    apps::namespace(&pair.cp, ns).await;
    let cp = LiveCluster::new("control plane", pair.cp.clone());
    let needs = Needs::of([&ObjectKey::namespaced("apps", "deployments", ns, "web")]);
    assert_eq!(
        needs,
        Needs {
            replicasets: true,
            ..Needs::default()
        }
    );

    // A frozen controller manager never claims the sentinel: the barrier fails, naming what it
    // waited for, rather than letting Deployments meet a controller that has not seen their
    // ReplicaSets.
    let control_plane = pair.env.cluster("control-plane");
    control_plane.pause_controller_manager().unwrap();
    let err = observe(&cp, ns, needs, Duration::from_secs(3)).await.unwrap_err();
    control_plane.resume_controller_manager().unwrap();
    assert!(
        err.to_string().contains("Deployment controller") && err.to_string().contains("replicasets"),
        "{err}"
    );
    observe(&cp, ns, needs, Duration::from_secs(60)).await.unwrap();

    // Every sentinel is gone, the ReplicaSet the Deployment controller claimed included.
    let sentinels = ListParams::default().labels(SENTINEL_LABEL);
    wait_for("the sentinels to be gone", Duration::from_secs(60), || async {
        let deployments = Api::<Deployment>::namespaced(pair.cp.clone(), ns)
            .list(&sentinels)
            .await
            .unwrap();
        let replicasets = Api::<ReplicaSet>::namespaced(pair.cp.clone(), ns)
            .list(&sentinels)
            .await
            .unwrap();
        let pods = Api::<Pod>::namespaced(pair.cp.clone(), ns)
            .list(&sentinels)
            .await
            .unwrap();
        (deployments.items.is_empty() && replicasets.items.is_empty() && pods.items.is_empty()).then_some(())
    })
    .await;
}

/// The CLI's promote of an archive the way `cli_promote` runs it.
fn cli(pair: &Pair, subcommand: &str, archive: &std::path::Path) -> std::process::Command {
    let mut cmd = pair.kpromote(subcommand);
    cmd.arg(format!("--archive={}", archive.display()))
        .env_remove("KPROMOTE_FAILPOINT");
    cmd
}

#[tokio::test]
async fn a_finished_promotion_is_never_resumed_and_two_runs_never_share_an_archive() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let dir = tempfile::tempdir().unwrap();
    let archive = support::archiving::archive(&pair.member, &[ns], &[], dir.path()).await;

    // Two runs at once on one archive: the second is refused while the first holds it.
    let first = cli(&pair, "promote", &archive)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let journal = kpromote_core::engine::journal_path(&archive, kpromote_core::engine::PROMOTE);
    wait_for("the first run's journal", Duration::from_secs(60), || async {
        journal.exists().then_some(())
    })
    .await;
    let second = cli(&pair, "rollback", &archive).output().unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains("another kpromote process"), "{said}");
    let first = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // Completed: running the same promote again does nothing and says so.
    let again = cli(&pair, "promote", &archive).output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already promoted"));

    // Rolled back: the promotion is finished for good; promote --archive refuses and says what to
    // do, instead of skipping detach and mark because the old journal says they are done.
    let rolled = cli(&pair, "rollback", &archive).output().unwrap();
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    wait_namespace_gone(&pair.cp, ns).await;
    let resumed = cli(&pair, "promote", &archive).output().unwrap();
    let said = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success(), "{said}");
    assert!(
        said.contains("finished (rolled back)") && said.contains("without --archive"),
        "{said}"
    );
    apps::snapshot(&pair.member, ns)
        .await
        .assert_rolled_back_to(&before, "rollback, then a refused resume");
    // A second rollback starts a new run from live state and finds nothing to do.
    let twice = cli(&pair, "rollback", &archive).output().unwrap();
    assert!(
        twice.status.success(),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
    assert!(
        kpromote_core::engine::journal_path(&archive, kpromote_core::engine::ROLLBACK)
            .with_extension("journal.1")
            .exists()
    );
}

#[tokio::test]
async fn rollback_goes_on_past_a_damaged_archive_entry_and_names_it() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let (mut run, path) = Promotion::archive_one_per_frame(&pair, ns).await;
    run.promote(&EngineOptions::default()).await.unwrap();

    // After promote, a flipped bit in two entries: the Deployment (an owner rollback must
    // re-create) and the last entry, a Service (which rollback removes from the control plane).
    let frames = frames(&path);
    let deployment = frames
        .iter()
        .find(|f| f.first_path == "resources/deployments.apps/namespaces/nginx-test/nginx.json")
        .cloned()
        .expect("the Deployment's frame");
    let last = frames.last().cloned().expect("frames");
    for frame in [&deployment, &last] {
        assert_eq!(frame.entries, 1, "{frame:?}");
    }
    damage_frames(&path, &[&deployment, &last]);
    assert!(
        Inventory::for_promote(&path).is_err(),
        "promote refuses a damaged archive"
    );
    let service = kpromote_archive::layout::parse_object_path(&last.first_path).unwrap();
    assert_eq!(service.resource, "services", "{last:?}");
    let owner: ObjectKey = "deployments.apps/nginx-test/nginx".parse().unwrap();

    // Rollback reads everything else (frames are independent), knows the damaged objects from
    // the verified index, rolls back all it can and names the owner it could not re-create.
    run.inv = Inventory::for_rollback(&path).unwrap();
    assert_eq!(
        run.inv.unreadable().keys().collect::<Vec<_>>(),
        [&service, &owner]
    );
    let report = run
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .unwrap();
    assert_eq!(report.unreadable.len(), 1, "{:?}", report.unreadable);
    assert!(
        report.unreadable[0].starts_with("deployments.apps/nginx-test/nginx was not re-created"),
        "{:?}",
        report.unreadable
    );
    // The Service goes with the namespace promote created, damaged entry or not.
    assert!(
        report.deleted.contains("namespaces/nginx-test"),
        "{:?}",
        report.deleted
    );
    wait_namespace_gone(&pair.cp, ns).await;
    // The ReplicaSet is re-created and takes the same pods back: no pod restarted or replaced.
    wait_for(
        "the re-created ReplicaSet to own the pods",
        Duration::from_secs(60),
        || async {
            let pods = Api::<Pod>::namespaced(pair.member.clone(), ns)
                .list(&ListParams::default())
                .await
                .unwrap();
            pods.items
                .iter()
                .all(|p| {
                    p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "ReplicaSet")
                })
                .then_some(())
        },
    )
    .await;
    wait_namespace_gone(&pair.cp, ns).await;
    assert_eq!(apps::snapshot(&pair.member, ns).await.pods, before.pods);
}

#[tokio::test]
async fn a_permanent_error_mid_run_stops_the_run_at_once_naming_it_and_rollback_resumes() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let permanent = |from, refusal| Faults {
        refuse_from: Some((from, refusal)),
        ..Faults::default()
    };

    // The member's token is revoked right after detach (the first PATCH marks a pod): promote
    // stops at once, and so does its automatic rollback, which needs the member too — leaving
    // a rollback journal that resumes once the credentials work again.
    let member_proxy =
        FaultProxy::start(pair.member.clone(), permanent("PATCH", Refusal::Unauthorized)).await;
    let run = Promotion::archive(&pair, &[ns], &[])
        .await
        .through(member_proxy.client(), pair.cp.clone());
    let message = fails_at_once(&run).await;
    assert!(
        message.contains("HTTP 401") && message.contains("renew the token"),
        "{message}"
    );
    assert!(message.contains("the automatic rollback failed too"), "{message}");
    member_proxy.heal().await;
    run.rollback("auto-rollback.journal", &EngineOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the rollback resumes once the member answers: {e}"));
    pair.assert_rolled_back(ns, &before, "rollback after revoked credentials")
        .await;

    // The control plane's URL now answers with a sign-in page (not the Kubernetes API) from the
    // restore's first create on: not retried for minutes, but named at once.
    let cp_proxy = FaultProxy::start(pair.cp.clone(), permanent("POST", Refusal::Malformed)).await;
    let run = Promotion::archive(&pair, &[ns], &[])
        .await
        .through(pair.member.clone(), cp_proxy.client());
    let message = fails_at_once(&run).await;
    assert!(
        message.contains("not the Kubernetes API") && message.contains("server URL"),
        "{message}"
    );
    assert!(
        cp_proxy
            .injected
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    cp_proxy.heal().await;
    run.rollback("auto-rollback.journal", &EngineOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the rollback resumes once the control plane answers: {e}"));
    pair.assert_rolled_back(ns, &before, "rollback after a malformed control plane")
        .await;
}

#[tokio::test]
async fn an_entry_that_stops_reading_during_rollback_stops_the_unmark_and_leaves_no_pod_marked() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let (mut run, path) = Promotion::archive_one_per_frame(&pair, ns).await;
    run.promote(&EngineOptions::default()).await.unwrap();

    // Rollback reads the archive whole, then a pod's entry goes bad before the unmark streams
    // it: skipping it would leave that member pod marked, and Kosmos deletes a marked pod with
    // its control-plane twin, which teardown removes.
    run.inv = Inventory::for_rollback(&path).unwrap();
    assert!(run.inv.unreadable().is_empty());
    let frames = frames(&path);
    let pod = frames
        .iter()
        .find(|f| f.first_path.starts_with("resources/pods/namespaces/nginx-test/"))
        .cloned()
        .expect("a pod's frame");
    damage_frames(&path, &[&pod]);
    let pod_key = kpromote_archive::layout::parse_object_path(&pod.first_path).unwrap();

    let err = run
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .expect_err("a scan that cannot be read stops the step");
    assert!(err.to_string().contains(&pod.first_path), "{err}");
    let pods: Api<Pod> = Api::namespaced(pair.cp.clone(), ns);
    assert!(
        pods.get_opt(&pod_key.name).await.unwrap().is_some(),
        "nothing was torn down: the marked member pod's twin is still there"
    );

    // Run again, the damage is known from the start: every pod is unmarked, none deleted.
    run.inv = Inventory::for_rollback(&path).unwrap();
    run.rollback("rollback.journal", &EngineOptions::default())
        .await
        .unwrap();
    wait_namespace_gone(&pair.cp, ns).await;
    assert_eq!(
        marked_pods(&pair.member, ns).await,
        Vec::<String>::new(),
        "still marked"
    );
    assert_eq!(apps::snapshot(&pair.member, ns).await.pods, before.pods);
}

#[tokio::test]
async fn an_adoption_that_keeps_conflicting_fails_and_is_done_when_resumed() {
    let (pair, _) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    // The control plane's controllers stand still (its namespace and default ServiceAccount
    // made first, a fixed pause instead of the barrier), so only kpromote adopts the pods. Every
    // write to a control-plane pod conflicts, as if something kept changing it: the adoption
    // that points the pods at their re-created ReplicaSet runs out of attempts.
    apps::namespace(&pair.cp, ns).await;
    pair.env
        .cluster("control-plane")
        .pause_controller_manager()
        .unwrap();
    let cp_proxy = FaultProxy::start(
        pair.cp.clone(),
        Faults {
            conflict_on: Some("/pods/"),
            ..Faults::default()
        },
    )
    .await;
    let run = Promotion::archive(&pair, &[ns], &[])
        .await
        .through(pair.member.clone(), cp_proxy.client());
    let opts = EngineOptions {
        step_retries: 0,
        settle: Duration::from_millis(100),
        ..EngineOptions::default()
    };
    let err = run
        .promote_with(&opts, false)
        .await
        .expect_err("an adoption that never happened is not a success");
    assert!(
        err.to_string().contains("attempts to point it at its owner"),
        "{err}"
    );

    // Resumed once the pods hold still, the adoption is done: it was not journaled as done.
    cp_proxy.heal().await;
    run.promote_with(&opts, false).await.unwrap();
    pair.env
        .cluster("control-plane")
        .resume_controller_manager()
        .unwrap();
    let pods = Api::<Pod>::namespaced(pair.cp.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(!pods.items.is_empty());
    for pod in pods.items {
        assert!(
            pod.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "ReplicaSet" && o.controller == Some(true)),
            "{:?} is not owned by its ReplicaSet",
            pod.metadata.name
        );
    }
}

/// Promotes `run`, which must fail within a minute (not after minutes of retries); its message.
async fn fails_at_once(run: &Promotion) -> String {
    let started = std::time::Instant::now();
    let err = run.promote(&EngineOptions::default()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}: {message}",
        started.elapsed()
    );
    message
}

#[tokio::test]
async fn an_owner_edited_since_the_backup_stops_the_detach_before_it_is_deleted() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let run = Promotion::archive(&pair, &[ns], &[]).await;
    // Someone edits the Deployment's spec after the backup: its generation moves on.
    Api::<Deployment>::namespaced(pair.member.clone(), ns)
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({ "spec": { "revisionHistoryLimit": 4 } })),
        )
        .await
        .unwrap();

    let err = run
        .promote_with(&EngineOptions::default(), false)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, kpromote_core::engine::EngineError::ChangedSinceBackup { .. }),
        "{message}"
    );
    assert!(message.contains("deployments.apps/nginx-test/nginx"), "{message}");
    assert!(message.contains("generation"), "{message}");
    // Nothing was deleted: the Deployment is there, not terminating, and the pods are untouched.
    let deployment = Api::<Deployment>::namespaced(pair.member.clone(), ns)
        .get("nginx")
        .await
        .unwrap();
    assert!(deployment.metadata.deletion_timestamp.is_none());
    assert_eq!(apps::snapshot(&pair.member, ns).await.pods, before.pods);
}

/// A member pod that gained a toleration since the backup (a running pod may gain them) stops the
/// promote naming the pod and the field — Kosmos would otherwise try to update the running pod
/// forever — keeps its toleration, and the automatic rollback restores the original. Detach's
/// patch is built from the archived copy: it would drop the toleration, and the member refuses it.
#[tokio::test]
async fn a_pod_that_gained_a_toleration_since_the_backup_stops_the_promote_naming_it() {
    promote_after_a_toleration_change(|tolerations| {
        tolerations.push(Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        });
        |t: &Toleration| t.key.as_deref() == Some("dedicated")
    })
    .await;
}

/// The same for a `tolerationSeconds` changed since the backup — which the API server lets a
/// running pod change, so a patch built from the archived copy would be accepted and put the old
/// value back silently, and the pod would then equal its twin: the patch is pinned to the
/// archived resourceVersion, the member refuses it, and the pod is judged on what it is.
#[tokio::test]
async fn a_pod_whose_toleration_seconds_changed_since_the_backup_stops_the_promote_and_keeps_them() {
    promote_after_a_toleration_change(|tolerations| {
        let timed = tolerations
            .iter_mut()
            .find(|t| t.toleration_seconds.is_some())
            .expect("the API server's DefaultTolerationSeconds gives every pod timed tolerations");
        timed.toleration_seconds = Some(3600);
        let key = timed.key.clone();
        move |t: &Toleration| t.key == key && t.toleration_seconds == Some(3600)
    })
    .await;
}

/// Changes the tolerations of one member pod of the nginx example after its backup with
/// `change` (which returns how to recognise the changed toleration), promotes, and checks that
/// the promote stopped naming the pod's tolerations, the pod kept the change, no member pod is
/// left marked and the automatic rollback restored the original.
async fn promote_after_a_toleration_change<F, K>(change: F)
where
    F: FnOnce(&mut Vec<Toleration>) -> K,
    K: Fn(&Toleration) -> bool,
{
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let run = Promotion::archive(&pair, &[ns], &[]).await;
    let pods: Api<Pod> = Api::namespaced(pair.member.clone(), ns);
    let pod = pods.list(&ListParams::default()).await.unwrap().items[0].clone();
    let name = pod.metadata.name.clone().unwrap();
    let mut tolerations = pod.spec.unwrap().tolerations.unwrap_or_default();
    let changed = change(&mut tolerations);
    pods.patch(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&serde_json::json!({ "spec": { "tolerations": tolerations } })),
    )
    .await
    .unwrap();

    let err = run.promote(&EngineOptions::default()).await.unwrap_err();
    let message = err.to_string();
    let kpromote_core::engine::EngineError::RolledBack { cause, rollback } = err else {
        panic!("promote rolls back automatically: {message}");
    };
    assert!(rollback.is_ok(), "{message}");
    // Named as a change since the backup, not as the member's refusal of the pinned patch.
    assert!(
        matches!(
            *cause,
            kpromote_core::engine::EngineError::ChangedSinceBackup { .. }
        ),
        "{message}"
    );
    assert!(message.contains(&format!("pods/{ns}/{name}")), "{message}");
    assert!(message.contains("tolerations"), "{message}");
    let pod = pods.get(&name).await.unwrap();
    assert!(
        pod.spec
            .unwrap()
            .tolerations
            .unwrap_or_default()
            .iter()
            .any(changed),
        "the change made since the backup is kept"
    );
    assert_eq!(marked_pods(&pair.member, ns).await, Vec::<String>::new());
    pair.assert_rolled_back(ns, &before, "rollback after the changed pod")
        .await;
}

/// A rollback whose owners the member refuses to re-create (an admission policy added since
/// promote denies every ReplicaSet) fails naming the refusal — and still leaves no member pod
/// marked: Kosmos deletes a marked member pod with its control-plane twin, and the twins stay
/// until a rollback finishes. Once the policy is gone the rollback resumes to the original state.
#[tokio::test]
async fn a_rollback_that_cannot_recreate_the_owners_still_leaves_no_member_pod_marked() {
    let (pair, before) = Pair::start_with_nginx().await;
    let ns = "nginx-test";
    let run = Promotion::archive(&pair, &[ns], &[]).await;
    run.promote(&EngineOptions::default()).await.unwrap();
    assert!(
        !marked_pods(&pair.member, ns).await.is_empty(),
        "promote marks the member pods"
    );

    apps::create(
        &pair.member,
        serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": "no-replicasets" },
            "spec": { "failurePolicy": "Fail",
                      "matchConstraints": { "resourceRules": [{ "apiGroups": ["apps"], "apiVersions": ["v1"],
                          "operations": ["CREATE"], "resources": ["replicasets"] }] },
                      "validations": [{ "expression": "false", "message": "no ReplicaSet may be created" }] } }),
    )
    .await;
    apps::create(
        &pair.member,
        serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": "no-replicasets" },
            "spec": { "policyName": "no-replicasets", "validationActions": ["Deny"] } }),
    )
    .await;
    // The API server loads the policy within a few seconds: a dry run shows when it denies.
    let replicasets: Api<ReplicaSet> = Api::namespaced(pair.member.clone(), ns);
    let probe: ReplicaSet = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "probe" },
        "spec": { "selector": { "matchLabels": { "probe": "x" } },
                  "template": { "metadata": { "labels": { "probe": "x" } },
                                "spec": { "containers": [{ "name": "c", "image": "busybox" }] } } } }))
    .unwrap();
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(
        "the admission policy to deny ReplicaSets",
        Duration::from_secs(60),
        || async { replicasets.create(&dry_run, &probe).await.is_err().then_some(()) },
    )
    .await;

    let err = run
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .expect_err("the member refuses the ReplicaSet");
    assert!(err.to_string().contains("no ReplicaSet may be created"), "{err}");
    assert_eq!(
        marked_pods(&pair.member, ns).await,
        Vec::<String>::new(),
        "a failed re-creation leaves no member pod marked"
    );
    let cp_pods = Api::<Pod>::namespaced(pair.cp.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(cp_pods.items.len(), before.pods.len(), "nothing was torn down");

    let bindings: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding> =
        Api::all(pair.member.clone());
    bindings
        .delete("no-replicasets", &Default::default())
        .await
        .unwrap();
    wait_for(
        "the admission policy to be gone",
        Duration::from_secs(60),
        || async { replicasets.create(&dry_run, &probe).await.is_ok().then_some(()) },
    )
    .await;
    run.rollback("rollback.journal", &EngineOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the rollback resumes once the policy is gone: {e}"));
    pair.assert_rolled_back(ns, &before, "rollback after the policy went")
        .await;
}

#[tokio::test]
async fn a_member_pod_replaced_under_its_name_with_the_marks_is_unmarked_by_rollback() {
    let pair = Pair::start().await;
    let run = promote_a_bare_pod(&pair).await;
    // A pod re-created under its name before rollback lists the pods.
    let pods: Api<Pod> = Api::namespaced(pair.member.clone(), BARE_NS);
    let (old, proxy) = replacing_proxy(&pair, 1).await;
    // Through the proxy, the replacement is made by the first PATCH of the pod (this one).
    Api::<Pod>::namespaced(proxy.client(), BARE_NS)
        .patch(
            "solo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({})),
        )
        .await
        .unwrap();
    assert_ne!(pods.get("solo").await.unwrap().metadata.uid, old.metadata.uid);
    let report = run
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .unwrap();
    assert_replacement_unmarked(&pair, &old, &report).await;
}

#[tokio::test]
async fn a_member_pod_replaced_while_rollback_unmarks_it_is_unmarked_under_its_new_uid() {
    let pair = Pair::start().await;
    let run = promote_a_bare_pod(&pair).await;
    // The pod is replaced between rollback's LIST and its unmarking patch, which carries the
    // listed UID: the member refuses it (422), and the pod is listed again.
    let (old, proxy) = replacing_proxy(&pair, 1).await;
    let report = run
        .through(proxy.client(), pair.cp.clone())
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .unwrap();
    assert_replacement_unmarked(&pair, &old, &report).await;
}

#[tokio::test]
async fn a_member_pod_replaced_at_every_unmark_stops_rollback_naming_it_before_teardown() {
    let pair = Pair::start().await;
    let run = promote_a_bare_pod(&pair).await;
    // Something re-creates the pod, marks and all, before each of rollback's patches of it.
    let (old, proxy) = replacing_proxy(&pair, 100).await;
    let run = run.through(proxy.client(), pair.cp.clone());
    let err = run
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .expect_err("a pod re-created marked at every pass stops rollback");
    let kpromote_core::engine::EngineError::MarkedPodsKeepComing { pods, passes } = &err else {
        panic!("not the marked pods' error: {err}");
    };
    assert_eq!(
        pods.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["pods/solo-test/solo"]
    );
    assert!(*passes > 1, "{err}");
    assert!(err.to_string().contains("solo-test/solo"), "{err}");
    // No teardown while a member pod carries the mark: Kosmos would delete it with its twin.
    Api::<Pod>::namespaced(pair.cp.clone(), BARE_NS)
        .get("solo")
        .await
        .expect("the control plane's pod stays while the member's is marked");
    assert_eq!(marked_pods(&pair.member, BARE_NS).await, ["solo"]);
    // Once nothing re-creates it, rollback resumes and unmarks what stands under the name.
    let report = run
        .through(pair.member.clone(), pair.cp.clone())
        .rollback("rollback.journal", &EngineOptions::default())
        .await
        .unwrap_or_else(|e| panic!("rollback resumes once the pod stays: {e}"));
    assert_replacement_unmarked(&pair, &old, &report).await;
}

/// The namespace of [`promote_a_bare_pod`].
const BARE_NS: &str = "solo-test";

/// Promotes namespace [`BARE_NS`], whose one pod `solo` has no owner: rollback re-creates no
/// owner whose adoption would unmark it, so its unmarking is the sweep's alone. A copy of the
/// marked pod, as a tool re-creating it would make, carries the Kosmos label and this archive's
/// stamp under another UID.
async fn promote_a_bare_pod(pair: &Pair) -> Promotion {
    apps::namespace(&pair.member, BARE_NS).await;
    apps::create(
        &pair.member,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "solo", "namespace": BARE_NS, "labels": { "app": "solo" } },
            "spec": { "containers": [{ "name": "main", "image": "nginx:1.27" }] } }),
    )
    .await;
    apps::run_pods(&pair.member, &pair.kubelet, BARE_NS, "app=solo", 1).await;
    let run = Promotion::archive(pair, &[BARE_NS], &[]).await;
    run.promote(&EngineOptions::default()).await.unwrap();
    assert_eq!(marked_pods(&pair.member, BARE_NS).await, ["solo"]);
    run
}

/// Member pod `solo` as promote left it, and a proxy to the member that replaces it (a copy with
/// its labels, annotations and spec, another UID) before each of its first `times` patches.
async fn replacing_proxy(pair: &Pair, times: u32) -> (Pod, FaultProxy) {
    let old = Api::<Pod>::namespaced(pair.member.clone(), BARE_NS)
        .get("solo")
        .await
        .unwrap();
    let proxy = FaultProxy::start(
        pair.member.clone(),
        Faults {
            replace_pod_before_patch: Some(("/namespaces/solo-test/pods/solo", times)),
            ..Faults::default()
        },
    )
    .await;
    (old, proxy)
}

/// After rollback: the control plane's copy is gone, and member pod `solo`, a replacement of
/// `old`, is left in place without the marks, the rollback saying so.
async fn assert_replacement_unmarked(pair: &Pair, old: &Pod, report: &kpromote_core::engine::Report) {
    wait_namespace_gone(&pair.cp, BARE_NS).await;
    assert_eq!(
        marked_pods(&pair.member, BARE_NS).await,
        Vec::<String>::new(),
        "the replacement is left marked"
    );
    let after = Api::<Pod>::namespaced(pair.member.clone(), BARE_NS)
        .get("solo")
        .await
        .unwrap();
    assert_ne!(after.metadata.uid, old.metadata.uid, "the replacement is there");
    let stamped = after
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key(kpromote_model::kosmos::STAMP_ANNOTATION);
    assert!(!stamped, "the stamp is taken off too");
    // The sweep's warning names the pod (its text covers both of the cases it handles).
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("solo-test/solo") && w.contains("replaced the archived pod")),
        "{:?}",
        report.warnings
    );
}

/// The pods of member namespace `ns` that carry the Kosmos mark detach puts on them.
async fn marked_pods(member: &kube::Client, ns: &str) -> Vec<String> {
    Api::<Pod>::namespaced(member.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|pod| {
            pod.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(kpromote_model::kosmos::POD_LABEL))
        })
        .filter_map(|pod| pod.metadata.name)
        .collect()
}
