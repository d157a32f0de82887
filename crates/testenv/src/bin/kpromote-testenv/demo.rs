//! `kpromote-testenv demo`: the main job end to end on an embedded default — two local clusters, the
//! design's nginx example in the member, then the controller (in its own process, the loop `kpromote controller` runs)
//! driving the design's PromotePolicy to `Completed` and, with `rollback: "true"`, to
//! `RolledBack` — narrated step by step with `kubectl`.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use kpromote_testenv::{Binaries, Clustertree, FakeKubelet, KosmosKit, TestEnv, register_virtual_node};

/// The design's sample application.
const NGINX_EXAMPLE: &str = include_str!("../../../../../deploy/examples/nginx.yaml");

/// Arguments of `kpromote-testenv demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the demo and tears everything down at the end (also on failure).
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kubectl = Binaries::locate()?.path("kubectl");
        step("starting two Kubernetes clusters (etcd, kube-apiserver, kube-controller-manager each)");
        let env = TestEnv::start(&["control-plane", "member"]).await?;
        let cp = env.cluster("control-plane");
        let member = env.cluster("member");
        let member_client = member.client().await?;
        register_virtual_node(&cp.client().await?, member.name()).await?;
        println!(
            "  control plane: {}\n  member:        {}",
            cp.server(),
            member.server()
        );

        step("deploying the design's nginx example straight into the member cluster");
        let manifest = member.dir().join("nginx.yaml");
        std::fs::write(&manifest, NGINX_EXAMPLE)?;
        kubectl_run(
            &kubectl,
            member.kubeconfig_path(),
            &["apply", "-f", &manifest.display().to_string()],
        )?;
        let kubelet = FakeKubelet::register(&member_client, "member-node-1").await?;
        let mut started = 0;
        for _ in 0..100 {
            started += kubelet.start_pods("nginx-test", "").await?;
            if started > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        kubectl_run(
            &kubectl,
            member.kubeconfig_path(),
            &["-n", "nginx-test", "get", "deploy,rs,pods,svc", "-o", "wide"],
        )?;
        kubectl_run(&kubectl, cp.kubeconfig_path(), &["get", "nodes", "--show-labels"])?;

        controller_demo(&kubectl, cp, member).await?;

        step("done; stopping the clusters");
        Ok(ExitCode::SUCCESS)
    })
}

/// Starts the real Kosmos clustertree beside the clusters when its kit is installed (see
/// `tests/testenv/kosmos.sh`), so the demo shows Kosmos mirroring the promoted pod; says so and
/// goes on without it otherwise.
async fn start_kosmos(
    cp: &kpromote_testenv::Cluster,
    member: &kpromote_testenv::Cluster,
) -> anyhow::Result<Option<Clustertree>> {
    match KosmosKit::locate() {
        Ok(kit) => {
            step(
                "starting the real Kosmos clustertree (it mirrors control-plane pods bound to kosmos-member)",
            );
            let kosmos = Clustertree::start(&kit, cp, member, member.name()).await?;
            println!("  clustertree log: {}", kosmos.log_path().display());
            Ok(Some(kosmos))
        }
        Err(e) => {
            step("Kosmos clustertree not installed: the demo runs without Kosmos mirroring the pods");
            println!("  {e}");
            Ok(None)
        }
    }
}

/// Says whether clustertree tried to change a pod since byte `from` of its log (it logs each
/// in-place update of a member pod), and fails the demo if it did. clustertree retries a refused
/// update every 10 s, so this first waits past one round.
async fn report_kosmos(kosmos: Option<&Clustertree>, from: usize, after: &str) -> anyhow::Result<()> {
    let Some(kosmos) = kosmos else { return Ok(()) };
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let attempts = kosmos.update_attempts(from);
    println!(
        "\n  Kosmos clustertree after {after}: {} attempt(s) to update a member pod in place",
        attempts.len()
    );
    anyhow::ensure!(
        attempts.is_empty(),
        "clustertree found the member and control-plane pods different after {after}:\n{}",
        attempts.join("\n")
    );
    Ok(())
}

/// The design's PromotePolicy (clusterName `member`).
const PROMOTE_POLICY: &str = include_str!("../../../../../deploy/examples/promote-policy.yaml");
/// Its name.
const POLICY_NAME: &str = "promote-policy-example";

/// The main job through the controller: CRDs and a Kosmos `Cluster` in the control plane, a
/// controller process, the design's PromotePolicy to `Completed`, then its
/// `rollback: "true"` to `RolledBack`.
async fn controller_demo(
    kubectl: &Path,
    cp: &kpromote_testenv::Cluster,
    member: &kpromote_testenv::Cluster,
) -> anyhow::Result<()> {
    use kpromote_core::kosmos::cluster::{Cluster, ClusterSpec};
    use kpromote_core::policy::Phase;

    step("installing the CRDs in the control plane (PromotePolicy, and Kosmos Cluster)");
    let crds = cp.dir().join("crds.yaml");
    std::fs::write(&crds, kpromote_core::policy::crds_yaml()?)?;
    kubectl_run(
        kubectl,
        cp.kubeconfig_path(),
        &["apply", "-f", &crds.display().to_string()],
    )?;
    kubectl_run(
        kubectl,
        cp.kubeconfig_path(),
        &[
            "wait",
            "--for=condition=Established",
            "crd/promotepolicies.kosmos.io",
            "crd/clusters.kosmos.io",
        ],
    )?;

    step("registering the member as Kosmos Cluster \"member\" (its kubeconfig in spec.kubeconfig)");
    let cp_client = cp.client().await?;
    let cluster = Cluster::new(
        member.name(),
        ClusterSpec {
            kubeconfig: Some(k8s_openapi::ByteString(
                member.kubeconfig_yaml().as_bytes().to_vec(),
            )),
        },
    );
    kube::Api::<Cluster>::all(cp_client.clone())
        .create(&kube::api::PostParams::default(), &cluster)
        .await?;
    kubectl_run(kubectl, cp.kubeconfig_path(), &["get", "clusters.kosmos.io"])?;

    let kosmos = start_kosmos(cp, member).await?;

    step("starting the PromotePolicy controller (a separate process, as `kpromote controller` runs it)");
    let backup_dir = cp.dir().join("backup");
    std::fs::create_dir_all(&backup_dir)?;
    let log_path = cp.dir().join("controller.log");
    let mut controller = ControllerChild::start(cp.kubeconfig_path(), &backup_dir, &log_path)?;
    println!(
        "  backups in {}\n  controller log: {}",
        backup_dir.display(),
        log_path.display()
    );

    step("applying the design's PromotePolicy");
    let policy_file = cp.dir().join("promote-nginx.yaml");
    println!("{PROMOTE_POLICY}");
    let applied = Applied {
        kubectl,
        cp,
        client: &cp_client,
        file: &policy_file,
    };
    let promoted_in = applied
        .watch(PROMOTE_POLICY, Phase::Completed, &mut controller)
        .await?;
    kubectl_run(kubectl, cp.kubeconfig_path(), &["get", "promotepolicy"])?;
    println!("\n  the application, now in the control plane, its pod bound to the virtual node:");
    kubectl_run(
        kubectl,
        cp.kubeconfig_path(),
        &["-n", "nginx-test", "get", "deploy,rs,pods,svc", "-o", "wide"],
    )?;
    println!("\n  the member runs the same pod (same name, no restart), without its owners:");
    kubectl_run(
        kubectl,
        member.kubeconfig_path(),
        &[
            "-n",
            "nginx-test",
            "get",
            "deploy,rs,pods",
            "-o",
            "wide",
            "--show-labels",
        ],
    )?;

    report_kosmos(kosmos.as_ref(), 0, "promote").await?;
    let rollback_log_start = kosmos.as_ref().map_or(0, |k| k.log().len());

    step("rolling back: the same policy with rollback: \"true\"");
    let rollback = PROMOTE_POLICY.replacen("spec:\n", "spec:\n  rollback: \"true\"\n", 1);
    let rolled_back_in = applied
        .watch(&rollback, Phase::RolledBack, &mut controller)
        .await?;
    println!("\n  the member is as it was, its owners back around the same pod:");
    kubectl_run(
        kubectl,
        member.kubeconfig_path(),
        &["-n", "nginx-test", "get", "deploy,rs,pods", "-o", "wide"],
    )?;
    println!("\n  and the control plane holds nothing of nginx-test:");
    kubectl_run(kubectl, cp.kubeconfig_path(), &["get", "namespaces"])?;
    report_kosmos(kosmos.as_ref(), rollback_log_start, "rollback").await?;

    step("cleaning up: deleting the policy (a RolledBack policy goes at once), stopping the controller");
    kubectl_run(
        kubectl,
        cp.kubeconfig_path(),
        &["delete", "promotepolicy", POLICY_NAME],
    )?;
    controller.stop();
    println!(
        "\n  applied -> Completed in {:.1}s; rollback applied -> RolledBack in {:.1}s",
        promoted_in.as_secs_f64(),
        rolled_back_in.as_secs_f64()
    );
    Ok(())
}

/// Where the demo's policy is written and applied.
struct Applied<'a> {
    kubectl: &'a Path,
    cp: &'a kpromote_testenv::Cluster,
    client: &'a kube::Client,
    file: &'a Path,
}

impl Applied<'_> {
    /// Writes `policy` and applies it, watches the phases until `goal`, then describes the policy;
    /// returns how long it took from apply to `goal`.
    async fn watch(
        &self,
        policy: &str,
        goal: kpromote_core::policy::Phase,
        controller: &mut ControllerChild,
    ) -> anyhow::Result<std::time::Duration> {
        std::fs::write(self.file, policy)?;
        let started = std::time::Instant::now();
        let kubeconfig = self.cp.kubeconfig_path();
        kubectl_run(
            self.kubectl,
            kubeconfig,
            &["apply", "-f", &self.file.display().to_string()],
        )?;
        watch_phases(self.client, goal, controller).await?;
        let took = started.elapsed();
        kubectl_run(
            self.kubectl,
            kubeconfig,
            &["describe", "promotepolicy", POLICY_NAME],
        )?;
        Ok(took)
    }
}

/// Prints each phase (and the progress of its step) as the controller writes it, until `goal`;
/// fails on any other final phase or if the controller exits.
async fn watch_phases(
    client: &kube::Client,
    goal: kpromote_core::policy::Phase,
    controller: &mut ControllerChild,
) -> anyhow::Result<()> {
    use kpromote_core::policy::PromotePolicy;
    let policies = kube::Api::<PromotePolicy>::all(client.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut last = String::new();
    let initial = policies
        .get_opt(POLICY_NAME)
        .await?
        .and_then(|p| p.status)
        .and_then(|s| s.phase);
    loop {
        let status = policies
            .get_opt(POLICY_NAME)
            .await?
            .and_then(|p| p.status)
            .unwrap_or_default();
        let line = match (&status.phase, &status.progress) {
            (Some(phase), Some(p)) => format!(
                "  phase {phase:<13} {} {}/{}",
                p.step, p.items_done, p.items_total
            ),
            (Some(phase), None) => format!("  phase {phase}"),
            (None, _) => "  phase (none yet)".to_owned(),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        match status.phase {
            Some(phase) if phase == goal => return Ok(()),
            Some(phase) if phase.is_terminal() && Some(phase) != initial => anyhow::bail!(
                "the policy ended in {phase}: {}; controller log: {}",
                status.failure_reason.unwrap_or_default(),
                controller.log_path.display()
            ),
            _ => {}
        }
        if let Some(exit) = controller.child.try_wait()? {
            anyhow::bail!(
                "the controller exited ({exit}); log: {}",
                controller.log_path.display()
            );
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the policy did not reach {goal} in 5 minutes; controller log: {}",
            controller.log_path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The controller as a child process (this binary's hidden `controller` command), logging (JSON lines) to a file; killed on drop.
struct ControllerChild {
    child: std::process::Child,
    log_path: std::path::PathBuf,
}

impl ControllerChild {
    fn start(kubeconfig: &Path, backup_dir: &Path, log_path: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_path)?;
        let port = kpromote_testenv::process::free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("controller")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--backup-dir={}", backup_dir.display()))
            .arg(format!("--metrics-address=127.0.0.1:{port}"))
            .arg("--progress-interval-seconds=0.5")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the controller process")?;
        Ok(Self {
            child,
            log_path: log_path.to_owned(),
        })
    }

    /// SIGTERM, then wait: the controller releases what it holds and exits.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn kubectl_run(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<()> {
    println!("$ kubectl {}", args.join(" "));
    let status = Command::new(kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .status()
        .with_context(|| format!("running {}", kubectl.display()))?;
    anyhow::ensure!(status.success(), "kubectl {} failed ({status})", args.join(" "));
    Ok(())
}
