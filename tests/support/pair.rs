//! The two clusters every promote test starts from: a control plane with the member's Kosmos
//! virtual node, and a member with one fake kubelet node.

use std::process::Command;

use kpromote_testenv::{Clustertree, FakeKubelet, KosmosKit, TestEnv, register_virtual_node};
use kube::Client;

/// A control plane and a member, ready for a promote.
pub struct Pair {
    /// The real Kosmos clustertree, when started with [`Pair::start_with_kosmos`]. First, so it
    /// stops before the clusters it talks to.
    pub kosmos: Option<Clustertree>,
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
            kosmos: None,
            env,
            cp,
            member,
            kubelet,
        }
    }

    /// Two clusters with the design's nginx example running in the member, and its snapshot.
    pub async fn start_with_nginx() -> (Self, super::apps::Snapshot) {
        let pair = Self::start().await;
        super::apps::nginx_example(&pair.member, &pair.kubelet).await;
        let before = super::apps::snapshot(&pair.member, "nginx-test").await;
        (pair, before)
    }

    /// After a rollback: the control plane lost namespace `ns`, and the member's `ns` is as in
    /// `before` (same pods, UIDs and restart counts; nothing a controller created).
    pub async fn assert_rolled_back(&self, ns: &str, before: &super::apps::Snapshot, what: &str) {
        super::wait_namespace_gone(&self.cp, ns).await;
        super::apps::snapshot(&self.member, ns)
            .await
            .assert_rolled_back_to(before, what);
    }

    /// [`Pair::start`], then the real Kosmos clustertree serving the member as cluster `member`
    /// (it adopts the virtual node `kosmos-member`). Fails — never skips — when the kit is not
    /// installed (`tests/testenv/kosmos.sh`).
    pub async fn start_with_kosmos() -> Self {
        let mut pair = Self::start().await;
        let kit = KosmosKit::locate().unwrap_or_else(|e| panic!("{e}"));
        let kosmos = Clustertree::start(
            &kit,
            pair.env.cluster("control-plane"),
            pair.env.cluster("member"),
            "member",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        pair.kosmos = Some(kosmos);
        pair
    }

    /// The running clustertree (panics unless started with [`Pair::start_with_kosmos`]).
    pub fn kosmos(&self) -> &Clustertree {
        self.kosmos
            .as_ref()
            .expect("started with Pair::start_with_kosmos")
    }

    /// See [`Pair::kosmos`].
    pub fn kosmos_mut(&mut self) -> &mut Clustertree {
        self.kosmos
            .as_mut()
            .expect("started with Pair::start_with_kosmos")
    }

    /// The `kpromote <subcommand>` process, aimed at these two clusters with the member named
    /// `member`: what every CLI test passes before its own flags.
    pub fn kpromote(&self, subcommand: &str) -> Command {
        let member = self.env.cluster("member").kubeconfig_path().display().to_string();
        let mut cmd = self.kpromote_to_control_plane(subcommand);
        cmd.arg(format!("--member-kubeconfig={member}"));
        cmd
    }

    /// [`Pair::kpromote`] without the member's flags, for a test that passes its own.
    pub fn kpromote_to_control_plane(&self, subcommand: &str) -> Command {
        let cp = self
            .env
            .cluster("control-plane")
            .kubeconfig_path()
            .display()
            .to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpromote"));
        cmd.arg(subcommand)
            .arg(format!("--control-plane-kubeconfig={cp}"))
            .arg("--cluster-name=member");
        cmd
    }
}
