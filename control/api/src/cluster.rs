//! Cluster-wide defaults, named once: the values Kubernetes' components default their flags
//! to, which several of ours must agree on (the kubelet, the controllers and the proxy on the
//! pod network; the apiserver and the proxy on the service range; the apiserver and the
//! kubelet on the kubelet's port).

/// `--cluster-cidr`: the pod network the nodes' pod subnets are cut from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// `--service-cluster-ip-range`: where ClusterIPs are allocated.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// `--service-node-port-range`.
pub const NODE_PORT_RANGE: &str = "30000-32767";

/// The apiserver's `--secure-port`.
pub const APISERVER_PORT: u16 = 6443;

/// The kubelet's API port (`--port`; also `status.daemonEndpoints.kubeletEndpoint.Port`).
pub const KUBELET_PORT: u16 = 10250;

/// The proxy's `--metrics-bind-address`.
pub const PROXY_METRICS_ADDRESS: &str = "0.0.0.0:10249";

/// The proxy's `--healthz-bind-address`.
pub const PROXY_HEALTHZ_ADDRESS: &str = "0.0.0.0:10256";
