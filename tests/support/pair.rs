//! The two clusters every promote test starts from: a control plane with the member's Kosmos
//! virtual node, and a member with one fake kubelet node.

use std::process::Command;

use kpromote::testenv::{FakeKubelet, TestEnv, register_virtual_node};
use kube::Client;

/// A control plane and a member, ready for a promote.
pub struct Pair {
    /// Owns the processes: dropping it tears both clusters down.
    pub env: TestEnv,
    pub cp: Client,
    pub member: Client,
    /// Binds and runs the member's pods.
    pub kubelet: FakeKubelet,
}

impl Pair {
    /// Starts both clusters, registers `kosmos-member` in the control plane and the
    /// `member-node-1` kubelet in the member.
    pub async fn start() -> Self {
        let env = TestEnv::start(&["control-plane", "member"]).await.unwrap();
        let cp = env.cluster("control-plane").client().await.unwrap();
        let member = env.cluster("member").client().await.unwrap();
        register_virtual_node(&cp, "member").await.unwrap();
        let kubelet = FakeKubelet::register(&member, "member-node-1").await.unwrap();
        Self {
            env,
            cp,
            member,
            kubelet,
        }
    }

    /// The `kpromote <subcommand>` process, aimed at these two clusters with the member named
    /// `member`: what every CLI test passes before its own flags.
    pub fn kpromote(&self, subcommand: &str) -> Command {
        let kubeconfig = |name: &str| self.env.cluster(name).kubeconfig_path().display().to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpromote"));
        cmd.arg(subcommand)
            .arg(format!("--member-kubeconfig={}", kubeconfig("member")))
            .arg(format!(
                "--control-plane-kubeconfig={}",
                kubeconfig("control-plane")
            ))
            .arg("--cluster-name=member");
        cmd
    }
}
