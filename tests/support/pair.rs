//! The two clusters every promote test starts from: a control plane with a node of its own and the
//! member's Kosmos virtual node, and a member with one fake kubelet node.

use std::process::Command;

use kpromote_testenv::{
    ClusterOptions, Clustertree, FakeKubelet, KosmosKit, NodeLease, TestEnv, register_virtual_node,
};
use kube::Client;

/// The control plane's own node: a real install runs its components (clustertree among them) on
/// nodes, and clustertree copies the virtual node's status from one of them.
pub const CONTROL_PLANE_NODE: &str = "control-plane-node-1";

/// A control plane and a member, ready for a promote.
pub struct Pair {
    /// The real Kosmos clustertree, when started with [`Pair::start_with_kosmos`]. First, so it
    /// stops before the clusters it talks to.
    pub kosmos: Option<Clustertree>,
    /// The virtual node's lease, kept by the rig while no clustertree runs (clustertree keeps
    /// it itself).
    pub virtual_lease: Option<NodeLease>,
    /// Keeps the control plane's own node ([`CONTROL_PLANE_NODE`]) alive.
    pub cp_kubelet: FakeKubelet,
    /// Owns the processes: dropping it tears both clusters down.
    pub env: TestEnv,
    pub cp: Client,
    pub member: Client,
    /// Binds and runs the member's pods.
    pub kubelet: FakeKubelet,
}

impl Pair {
    /// Starts both clusters of the profile `$KPROMOTE_TESTENV_PROFILE` names, registers the
    /// control plane's own node and `kosmos-member` there (its lease kept by the rig) and the
    /// `member-node-1` kubelet in the member.
    pub async fn start() -> Self {
        Self::start_in(&ClusterOptions::from_env().unwrap()).await
    }

    /// [`Pair::start`] with explicit cluster options (a profile).
    pub async fn start_in(options: &ClusterOptions) -> Self {
        let mut pair = Self::clusters(options).await;
        pair.virtual_lease = Some(NodeLease::keep(&pair.cp, "kosmos-member").await.unwrap());
        pair
    }

    /// The clusters and nodes; nobody keeps the virtual node's lease.
    async fn clusters(options: &ClusterOptions) -> Self {
        let env = TestEnv::start_with(&["control-plane", "member"], options)
            .await
            .unwrap();
        let cp = env.cluster("control-plane").client().await.unwrap();
        let member = env.cluster("member").client().await.unwrap();
        let cp_kubelet = FakeKubelet::register(&cp, CONTROL_PLANE_NODE).await.unwrap();
        register_virtual_node(&cp, "member").await.unwrap();
        let kubelet = FakeKubelet::register(&member, "member-node-1").await.unwrap();
        Self {
            kosmos: None,
            virtual_lease: None,
            cp_kubelet,
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
    /// (it adopts the virtual node `kosmos-member` and keeps its status and lease, as in a real
    /// install). Fails — never skips — when the kit is not installed (`tests/testenv/kosmos.sh`).
    pub async fn start_with_kosmos() -> Self {
        Self::start_with_kosmos_in(&ClusterOptions::from_env().unwrap()).await
    }

    /// [`Pair::start_with_kosmos`] with explicit cluster options (a profile).
    pub async fn start_with_kosmos_in(options: &ClusterOptions) -> Self {
        let mut pair = Self::clusters(options).await;
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
