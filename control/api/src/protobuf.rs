//! Decoding of Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) into JSON
//! for the kinds kubectl's typed `create` commands send (Secret, ConfigMap, Namespace, Service,
//! ServiceAccount, ResourceQuota, Deployment, ReplicaSet, Job, CronJob, RBAC and review
//! kinds). Field numbers follow `k8s.io/api/{core,apps,batch}/v1/generated.proto` and
//! `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`; unknown fields are skipped.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The 4-byte prefix of Kubernetes protobuf messages.
pub const MAGIC: &[u8] = b"k8s\x00";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    MapQuantity,
    RepStr,
    RepMsg(&'static [Field]),
    Time,
    IntOrString,
    /// A pointer int (`*int32`): an explicit 0 is kept.
    OptInt,
    /// A pointer bool (`*bool`): an explicit false is kept.
    OptBool,
    /// A Go embedded struct: its fields appear in the parent's JSON object.
    Inline(&'static [Field]),
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    kind: Kind,
}

const fn f(num: u64, name: &'static str, kind: Kind) -> Field {
    Field { num, name, kind }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "uid", Kind::Str),
    f(5, "apiVersion", Kind::Str),
    f(6, "controller", Kind::Bool),
    f(7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "generateName", Kind::Str),
    f(3, "namespace", Kind::Str),
    f(5, "uid", Kind::Str),
    f(6, "resourceVersion", Kind::Str),
    f(7, "generation", Kind::Int),
    f(8, "creationTimestamp", Kind::Time),
    f(9, "deletionTimestamp", Kind::Time),
    f(10, "deletionGracePeriodSeconds", Kind::Int),
    f(11, "labels", Kind::MapStr),
    f(12, "annotations", Kind::MapStr),
    f(13, "ownerReferences", Kind::RepMsg(OWNER_REFERENCE)),
    f(14, "finalizers", Kind::RepStr),
];

const SECRET: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "data", Kind::MapBytes),
    f(3, "type", Kind::Str),
    f(4, "stringData", Kind::MapStr),
    f(5, "immutable", Kind::Bool),
];

const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "data", Kind::MapStr),
    f(3, "binaryData", Kind::MapBytes),
    f(4, "immutable", Kind::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[f(1, "finalizers", Kind::RepStr)];
const NAMESPACE_STATUS: &[Field] = &[f(1, "phase", Kind::Str)];
const NAMESPACE: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(NAMESPACE_SPEC)),
    f(3, "status", Kind::Msg(NAMESPACE_STATUS)),
];

const SERVICE_PORT: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "protocol", Kind::Str),
    f(3, "port", Kind::Int),
    f(4, "targetPort", Kind::IntOrString),
    f(5, "nodePort", Kind::Int),
    f(6, "appProtocol", Kind::Str),
];

const SERVICE_SPEC: &[Field] = &[
    f(1, "ports", Kind::RepMsg(SERVICE_PORT)),
    f(2, "selector", Kind::MapStr),
    f(3, "clusterIP", Kind::Str),
    f(4, "type", Kind::Str),
    f(5, "externalIPs", Kind::RepStr),
    f(7, "sessionAffinity", Kind::Str),
    f(8, "loadBalancerIP", Kind::Str),
    f(9, "loadBalancerSourceRanges", Kind::RepStr),
    f(10, "externalName", Kind::Str),
    f(11, "externalTrafficPolicy", Kind::Str),
    f(12, "healthCheckNodePort", Kind::Int),
    f(13, "publishNotReadyAddresses", Kind::Bool),
    f(17, "ipFamilyPolicy", Kind::Str),
    f(18, "clusterIPs", Kind::RepStr),
    f(19, "ipFamilies", Kind::RepStr),
    f(20, "allocateLoadBalancerNodePorts", Kind::Bool),
    f(21, "loadBalancerClass", Kind::Str),
    f(22, "internalTrafficPolicy", Kind::Str),
];

const SERVICE: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(SERVICE_SPEC)),
];

const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Kind::Str),
    f(2, "namespace", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "uid", Kind::Str),
    f(5, "apiVersion", Kind::Str),
    f(6, "resourceVersion", Kind::Str),
    f(7, "fieldPath", Kind::Str),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Kind::Str)];

const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "secrets", Kind::RepMsg(OBJECT_REFERENCE)),
    f(3, "imagePullSecrets", Kind::RepMsg(LOCAL_OBJECT_REFERENCE)),
    f(4, "automountServiceAccountToken", Kind::Bool),
];

const RESOURCE_QUOTA_SPEC: &[Field] = &[
    f(1, "hard", Kind::MapQuantity),
    f(2, "scopes", Kind::RepStr),
];

const RESOURCE_QUOTA: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(RESOURCE_QUOTA_SPEC)),
];

// k8s.io/api/core/v1/generated.proto: pod templates (the fields kubectl's typed create
// commands and common manifests set).
const LABEL_SELECTOR_REQUIREMENT: &[Field] = &[
    f(1, "key", Kind::Str),
    f(2, "operator", Kind::Str),
    f(3, "values", Kind::RepStr),
];

const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", Kind::MapStr),
    f(
        2,
        "matchExpressions",
        Kind::RepMsg(LABEL_SELECTOR_REQUIREMENT),
    ),
];

const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "hostPort", Kind::Int),
    f(3, "containerPort", Kind::Int),
    f(4, "protocol", Kind::Str),
    f(5, "hostIP", Kind::Str),
];

const KEY_SELECTOR: &[Field] = &[
    f(
        1,
        "localObjectReference",
        Kind::Inline(LOCAL_OBJECT_REFERENCE),
    ),
    f(2, "key", Kind::Str),
    f(3, "optional", Kind::OptBool),
];

const ENV_VAR_SOURCE: &[Field] = &[
    f(
        1,
        "fieldRef",
        Kind::Msg(&[f(1, "apiVersion", Kind::Str), f(2, "fieldPath", Kind::Str)]),
    ),
    f(
        2,
        "resourceFieldRef",
        Kind::Msg(&[
            f(1, "containerName", Kind::Str),
            f(2, "resource", Kind::Str),
        ]),
    ),
    f(3, "configMapKeyRef", Kind::Msg(KEY_SELECTOR)),
    f(4, "secretKeyRef", Kind::Msg(KEY_SELECTOR)),
];

const ENV_VAR: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "value", Kind::Str),
    f(3, "valueFrom", Kind::Msg(ENV_VAR_SOURCE)),
];

const ENV_SOURCE: &[Field] = &[
    f(
        1,
        "localObjectReference",
        Kind::Inline(LOCAL_OBJECT_REFERENCE),
    ),
    f(2, "optional", Kind::OptBool),
];

const ENV_FROM_SOURCE: &[Field] = &[
    f(1, "prefix", Kind::Str),
    f(2, "configMapRef", Kind::Msg(ENV_SOURCE)),
    f(3, "secretRef", Kind::Msg(ENV_SOURCE)),
];

const RESOURCE_REQUIREMENTS: &[Field] = &[
    f(1, "limits", Kind::MapQuantity),
    f(2, "requests", Kind::MapQuantity),
];

const VOLUME_MOUNT: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "readOnly", Kind::Bool),
    f(3, "mountPath", Kind::Str),
    f(4, "subPath", Kind::Str),
];

const PROBE_HANDLER: &[Field] = &[
    f(1, "exec", Kind::Msg(&[f(1, "command", Kind::RepStr)])),
    f(
        2,
        "httpGet",
        Kind::Msg(&[
            f(1, "path", Kind::Str),
            f(2, "port", Kind::IntOrString),
            f(3, "host", Kind::Str),
            f(4, "scheme", Kind::Str),
        ]),
    ),
    f(
        3,
        "tcpSocket",
        Kind::Msg(&[f(1, "port", Kind::IntOrString), f(2, "host", Kind::Str)]),
    ),
];

const PROBE: &[Field] = &[
    f(1, "handler", Kind::Inline(PROBE_HANDLER)),
    f(2, "initialDelaySeconds", Kind::Int),
    f(3, "timeoutSeconds", Kind::Int),
    f(4, "periodSeconds", Kind::Int),
    f(5, "successThreshold", Kind::Int),
    f(6, "failureThreshold", Kind::Int),
];

const SECURITY_CONTEXT: &[Field] = &[
    f(2, "privileged", Kind::OptBool),
    f(4, "runAsUser", Kind::OptInt),
    f(5, "runAsNonRoot", Kind::OptBool),
    f(6, "readOnlyRootFilesystem", Kind::OptBool),
    f(7, "allowPrivilegeEscalation", Kind::OptBool),
    f(8, "runAsGroup", Kind::OptInt),
];

const CONTAINER: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "image", Kind::Str),
    f(3, "command", Kind::RepStr),
    f(4, "args", Kind::RepStr),
    f(5, "workingDir", Kind::Str),
    f(6, "ports", Kind::RepMsg(CONTAINER_PORT)),
    f(7, "env", Kind::RepMsg(ENV_VAR)),
    f(8, "resources", Kind::Msg(RESOURCE_REQUIREMENTS)),
    f(9, "volumeMounts", Kind::RepMsg(VOLUME_MOUNT)),
    f(10, "livenessProbe", Kind::Msg(PROBE)),
    f(11, "readinessProbe", Kind::Msg(PROBE)),
    f(13, "terminationMessagePath", Kind::Str),
    f(14, "imagePullPolicy", Kind::Str),
    f(15, "securityContext", Kind::Msg(SECURITY_CONTEXT)),
    f(16, "stdin", Kind::Bool),
    f(17, "stdinOnce", Kind::Bool),
    f(18, "tty", Kind::Bool),
    f(19, "envFrom", Kind::RepMsg(ENV_FROM_SOURCE)),
    f(20, "terminationMessagePolicy", Kind::Str),
    f(22, "startupProbe", Kind::Msg(PROBE)),
];

const KEY_TO_PATH: &[Field] = &[
    f(1, "key", Kind::Str),
    f(2, "path", Kind::Str),
    f(3, "mode", Kind::OptInt),
];

const VOLUME_SOURCE: &[Field] = &[
    f(
        1,
        "hostPath",
        Kind::Msg(&[f(1, "path", Kind::Str), f(2, "type", Kind::Str)]),
    ),
    f(2, "emptyDir", Kind::Msg(&[f(1, "medium", Kind::Str)])),
    f(
        6,
        "secret",
        Kind::Msg(&[
            f(1, "secretName", Kind::Str),
            f(2, "items", Kind::RepMsg(KEY_TO_PATH)),
            f(3, "defaultMode", Kind::OptInt),
            f(4, "optional", Kind::OptBool),
        ]),
    ),
    f(
        19,
        "configMap",
        Kind::Msg(&[
            f(
                1,
                "localObjectReference",
                Kind::Inline(LOCAL_OBJECT_REFERENCE),
            ),
            f(2, "items", Kind::RepMsg(KEY_TO_PATH)),
            f(3, "defaultMode", Kind::OptInt),
            f(4, "optional", Kind::OptBool),
        ]),
    ),
];

const VOLUME: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "volumeSource", Kind::Inline(VOLUME_SOURCE)),
];

const TOLERATION: &[Field] = &[
    f(1, "key", Kind::Str),
    f(2, "operator", Kind::Str),
    f(3, "value", Kind::Str),
    f(4, "effect", Kind::Str),
    f(5, "tolerationSeconds", Kind::OptInt),
];

const POD_SECURITY_CONTEXT: &[Field] = &[
    f(2, "runAsUser", Kind::OptInt),
    f(3, "runAsNonRoot", Kind::OptBool),
    f(5, "fsGroup", Kind::OptInt),
    f(6, "runAsGroup", Kind::OptInt),
];

const POD_SPEC: &[Field] = &[
    f(1, "volumes", Kind::RepMsg(VOLUME)),
    f(2, "containers", Kind::RepMsg(CONTAINER)),
    f(3, "restartPolicy", Kind::Str),
    f(4, "terminationGracePeriodSeconds", Kind::OptInt),
    f(5, "activeDeadlineSeconds", Kind::OptInt),
    f(6, "dnsPolicy", Kind::Str),
    f(7, "nodeSelector", Kind::MapStr),
    f(8, "serviceAccountName", Kind::Str),
    f(9, "serviceAccount", Kind::Str),
    f(10, "nodeName", Kind::Str),
    f(11, "hostNetwork", Kind::Bool),
    f(12, "hostPID", Kind::Bool),
    f(13, "hostIPC", Kind::Bool),
    f(14, "securityContext", Kind::Msg(POD_SECURITY_CONTEXT)),
    f(15, "imagePullSecrets", Kind::RepMsg(LOCAL_OBJECT_REFERENCE)),
    f(16, "hostname", Kind::Str),
    f(17, "subdomain", Kind::Str),
    f(19, "schedulerName", Kind::Str),
    f(20, "initContainers", Kind::RepMsg(CONTAINER)),
    f(21, "automountServiceAccountToken", Kind::OptBool),
    f(22, "tolerations", Kind::RepMsg(TOLERATION)),
    f(24, "priorityClassName", Kind::Str),
    f(25, "priority", Kind::OptInt),
    f(30, "enableServiceLinks", Kind::OptBool),
    f(31, "preemptionPolicy", Kind::Str),
];

const POD_TEMPLATE_SPEC: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(POD_SPEC)),
];

// k8s.io/api/batch/v1/generated.proto
const JOB_SPEC: &[Field] = &[
    f(1, "parallelism", Kind::OptInt),
    f(2, "completions", Kind::OptInt),
    f(3, "activeDeadlineSeconds", Kind::OptInt),
    f(4, "selector", Kind::Msg(LABEL_SELECTOR)),
    f(5, "manualSelector", Kind::OptBool),
    f(6, "template", Kind::Msg(POD_TEMPLATE_SPEC)),
    f(7, "backoffLimit", Kind::OptInt),
    f(8, "ttlSecondsAfterFinished", Kind::OptInt),
    f(9, "completionMode", Kind::Str),
    f(10, "suspend", Kind::OptBool),
    f(12, "backoffLimitPerIndex", Kind::OptInt),
    f(13, "maxFailedIndexes", Kind::OptInt),
    f(14, "podReplacementPolicy", Kind::Str),
    f(15, "managedBy", Kind::Str),
];

const JOB: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(JOB_SPEC)),
];

const JOB_TEMPLATE_SPEC: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(JOB_SPEC)),
];

const CRON_JOB_SPEC: &[Field] = &[
    f(1, "schedule", Kind::Str),
    f(2, "startingDeadlineSeconds", Kind::OptInt),
    f(3, "concurrencyPolicy", Kind::Str),
    f(4, "suspend", Kind::OptBool),
    f(5, "jobTemplate", Kind::Msg(JOB_TEMPLATE_SPEC)),
    f(6, "successfulJobsHistoryLimit", Kind::OptInt),
    f(7, "failedJobsHistoryLimit", Kind::OptInt),
    f(8, "timeZone", Kind::Str),
];

const CRON_JOB: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(CRON_JOB_SPEC)),
];

// k8s.io/api/rbac/v1/generated.proto
const ROLLING_UPDATE_DEPLOYMENT: &[Field] = &[
    f(1, "maxUnavailable", Kind::IntOrString),
    f(2, "maxSurge", Kind::IntOrString),
];

const DEPLOYMENT_STRATEGY: &[Field] = &[
    f(1, "type", Kind::Str),
    f(2, "rollingUpdate", Kind::Msg(ROLLING_UPDATE_DEPLOYMENT)),
];

// `k8s.io/api/apps/v1/generated.proto`.
const DEPLOYMENT_SPEC: &[Field] = &[
    f(1, "replicas", Kind::OptInt),
    f(2, "selector", Kind::Msg(LABEL_SELECTOR)),
    f(3, "template", Kind::Msg(POD_TEMPLATE_SPEC)),
    f(4, "strategy", Kind::Msg(DEPLOYMENT_STRATEGY)),
    f(5, "minReadySeconds", Kind::Int),
    f(6, "revisionHistoryLimit", Kind::OptInt),
    f(7, "paused", Kind::Bool),
    f(9, "progressDeadlineSeconds", Kind::OptInt),
];

const DEPLOYMENT: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(DEPLOYMENT_SPEC)),
];

const REPLICA_SET_SPEC: &[Field] = &[
    f(1, "replicas", Kind::OptInt),
    f(2, "selector", Kind::Msg(LABEL_SELECTOR)),
    f(3, "template", Kind::Msg(POD_TEMPLATE_SPEC)),
    f(4, "minReadySeconds", Kind::Int),
];

const REPLICA_SET: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(REPLICA_SET_SPEC)),
];

const POLICY_RULE: &[Field] = &[
    f(1, "verbs", Kind::RepStr),
    f(2, "apiGroups", Kind::RepStr),
    f(3, "resources", Kind::RepStr),
    f(4, "resourceNames", Kind::RepStr),
    f(5, "nonResourceURLs", Kind::RepStr),
];

const ROLE: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "rules", Kind::RepMsg(POLICY_RULE)),
];

const ROLE_REF: &[Field] = &[
    f(1, "apiGroup", Kind::Str),
    f(2, "kind", Kind::Str),
    f(3, "name", Kind::Str),
];

const SUBJECT: &[Field] = &[
    f(1, "kind", Kind::Str),
    f(2, "apiGroup", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "namespace", Kind::Str),
];

const ROLE_BINDING: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "subjects", Kind::RepMsg(SUBJECT)),
    f(3, "roleRef", Kind::Msg(ROLE_REF)),
];

// k8s.io/api/authorization/v1/generated.proto
const RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Kind::Str),
    f(2, "verb", Kind::Str),
    f(3, "group", Kind::Str),
    f(4, "version", Kind::Str),
    f(5, "resource", Kind::Str),
    f(6, "subresource", Kind::Str),
    f(7, "name", Kind::Str),
];

const NON_RESOURCE_ATTRIBUTES: &[Field] = &[f(1, "path", Kind::Str), f(2, "verb", Kind::Str)];

const SELF_SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    f(1, "resourceAttributes", Kind::Msg(RESOURCE_ATTRIBUTES)),
    f(
        2,
        "nonResourceAttributes",
        Kind::Msg(NON_RESOURCE_ATTRIBUTES),
    ),
];

const SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    f(1, "resourceAttributes", Kind::Msg(RESOURCE_ATTRIBUTES)),
    f(
        2,
        "nonResourceAttributes",
        Kind::Msg(NON_RESOURCE_ATTRIBUTES),
    ),
    f(3, "user", Kind::Str),
    f(4, "groups", Kind::RepStr),
    f(6, "uid", Kind::Str),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
];

const SUBJECT_ACCESS_REVIEW: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(SUBJECT_ACCESS_REVIEW_SPEC)),
];

const SELF_SUBJECT_RULES_REVIEW: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(&[f(1, "namespace", Kind::Str)])),
];

// k8s.io/api/authentication/v1/generated.proto
const TOKEN_REVIEW: &[Field] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Kind::Msg(&[f(1, "token", Kind::Str), f(2, "audiences", Kind::RepStr)]),
    ),
];

const SELF_SUBJECT_REVIEW: &[Field] = &[f(1, "metadata", Kind::Msg(OBJECT_META))];

fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Service") => SERVICE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "ResourceQuota") => RESOURCE_QUOTA,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("apps/v1", "ReplicaSet") => REPLICA_SET,
        ("batch/v1", "Job") => JOB,
        ("batch/v1", "CronJob") => CRON_JOB,
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => SELF_SUBJECT_RULES_REVIEW,
        ("authentication.k8s.io/v1", "TokenReview") => TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn err(m: &str) -> Error {
    Error::Decode(format!("invalid protobuf: {m}"))
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| err("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(err("truncated field"));
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let w = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| err("length overflow"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            _ => return Err(err("unsupported wire type")),
        };
        Ok(Some((key >> 3, w)))
    }
}

fn string(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| err("string is not UTF-8"))
}

fn map_entry(b: &[u8]) -> Result<(String, &[u8])> {
    let mut r = Reader { buf: b };
    let (mut k, mut v) = (String::new(), &b[..0]);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(x)) => k = string(x)?,
            (2, Wire::Bytes(x)) => v = x,
            _ => {}
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value> {
    let mut r = Reader { buf: b };
    let mut secs = 0i64;
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Varint(v)) = (n, w) {
            secs = v as i64;
        }
    }
    // Go's zero time (year 1) is `null` in JSON.
    if secs <= 0 {
        return Ok(Value::Null);
    }
    let t = jiff::Timestamp::from_second(secs).map_err(|_| err("time out of range"))?;
    Ok(json!(crate::meta::format_time(t)))
}

fn int_or_string(b: &[u8]) -> Result<Value> {
    let mut r = Reader { buf: b };
    let (mut ty, mut i, mut s) = (0u64, 0i64, String::new());
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Varint(v)) => ty = v,
            (2, Wire::Varint(v)) => i = i64::from(v as i32),
            (3, Wire::Bytes(x)) => s = string(x)?,
            _ => {}
        }
    }
    Ok(if ty == 1 { json!(s) } else { json!(i) })
}

fn quantity(b: &[u8]) -> Result<Value> {
    let mut r = Reader { buf: b };
    let mut s = String::new();
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Bytes(x)) = (n, w) {
            s = string(x)?;
        }
    }
    Ok(json!(s))
}

fn message(b: &[u8], fields: &[Field]) -> Result<Value> {
    let mut out = Map::new();
    let mut r = Reader { buf: b };
    while let Some((n, w)) = r.next()? {
        let Some(field) = fields.iter().find(|f| f.num == n) else {
            continue;
        };
        let name = field.name.to_string();
        match (field.kind, w) {
            // Go omits zero values (`omitempty`); gogo-protobuf still encodes them.
            (Kind::Str, Wire::Bytes([])) => {}
            (Kind::Bool | Kind::Int, Wire::Varint(0)) => {}
            (Kind::Str, Wire::Bytes(x)) => {
                out.insert(name, json!(string(x)?));
            }
            (Kind::Bool | Kind::OptBool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (Kind::OptInt, Wire::Varint(v)) => {
                out.insert(name, json!(v as i64));
            }
            (Kind::Inline(sub), Wire::Bytes(x)) => {
                if let Value::Object(m) = message(x, sub)? {
                    out.extend(m);
                }
            }
            (Kind::Int, Wire::Varint(v)) => {
                out.insert(name, json!(v as i64));
            }
            (Kind::Msg(sub), Wire::Bytes(x)) => {
                out.insert(name, message(x, sub)?);
            }
            (Kind::Time, Wire::Bytes(x)) => {
                let t = time(x)?;
                if !t.is_null() {
                    out.insert(name, t);
                }
            }
            (Kind::IntOrString, Wire::Bytes(x)) => {
                out.insert(name, int_or_string(x)?);
            }
            (Kind::MapStr | Kind::MapBytes | Kind::MapQuantity, Wire::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                let v = match field.kind {
                    Kind::MapStr => json!(string(v)?),
                    Kind::MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(v)),
                    _ => quantity(v)?,
                };
                let m = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
            }
            (Kind::RepStr, Wire::Bytes(x)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.push(json!(string(x)?));
                }
            }
            (Kind::RepMsg(sub), Wire::Bytes(x)) => {
                let item = message(x, sub)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.push(item);
                }
            }
            _ => {
                return Err(err(&format!(
                    "field {} has an unexpected wire type",
                    field.name
                )));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed `runtime.Unknown` envelope into a JSON object with `apiVersion`
/// and `kind`. Kinds without a schema here are an error naming the kind.
pub fn decode(body: &[u8]) -> Result<Value> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s\\0 prefix"))?;
    let mut r = Reader { buf: inner };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &inner[..0]);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                let mut t = Reader { buf: tm };
                while let Some((n, w)) = t.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(x)) => api_version = string(x)?,
                        (2, Wire::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let fields = schema(&api_version, &kind).ok_or_else(|| {
        Error::UnsupportedEncoding(format!(
            "protobuf bodies of {kind} ({api_version}) are not supported; send application/json"
        ))
    })?;
    let mut v = message(raw, fields)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn int_field(n: u64, v: u64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v, out);
    }

    #[test]
    fn decodes_a_secret_like_kubectl_sends_it() {
        let mut meta = Vec::new();
        bytes_field(1, b"s2", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"a", &mut entry);
        bytes_field(2, b"b", &mut entry);
        let mut secret = Vec::new();
        bytes_field(1, &meta, &mut secret);
        bytes_field(2, &entry, &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"Secret", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &secret, &mut body);
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"},
                   "data": {"a": "Yg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn decodes_service_ports_with_int_or_string() {
        let mut tp = Vec::new();
        int_field(2, 8080, &mut tp);
        let mut port = Vec::new();
        bytes_field(1, b"80-8080", &mut port);
        int_field(3, 80, &mut port);
        bytes_field(4, &tp, &mut port);
        let mut spec = Vec::new();
        bytes_field(1, &port, &mut spec);
        bytes_field(4, b"ClusterIP", &mut spec);
        let mut svc = Vec::new();
        bytes_field(2, &spec, &mut svc);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"Service", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &svc, &mut body);
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v["spec"]["ports"][0],
            json!({"name": "80-8080", "port": 80, "targetPort": 8080})
        );
        assert_eq!(v["spec"]["type"], "ClusterIP");
        let mut tm = Vec::new();
        bytes_field(1, b"apps/v1", &mut tm);
        bytes_field(2, b"StatefulSet", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        assert!(decode(&body).is_err(), "a kind without a schema is refused");
        assert!(decode(b"garbage").is_err());
    }

    #[test]
    fn decodes_a_job_like_kubectl_create_job_sends_it() {
        let mut container = Vec::new();
        bytes_field(1, b"hello", &mut container);
        bytes_field(2, b"busybox", &mut container);
        for arg in [&b"/bin/sh"[..], b"-c", b"echo hi"] {
            bytes_field(3, arg, &mut container);
        }
        bytes_field(8, b"", &mut container);
        let mut cm = Vec::new();
        let mut name = Vec::new();
        bytes_field(1, b"cfg", &mut name);
        bytes_field(1, &name, &mut cm);
        let mut source = Vec::new();
        bytes_field(19, &cm, &mut source);
        let mut volume = Vec::new();
        bytes_field(1, b"conf", &mut volume);
        bytes_field(2, &source, &mut volume);
        let mut pod_spec = Vec::new();
        bytes_field(1, &volume, &mut pod_spec);
        bytes_field(2, &container, &mut pod_spec);
        bytes_field(3, b"Never", &mut pod_spec);
        let mut template = Vec::new();
        bytes_field(1, b"", &mut template);
        bytes_field(2, &pod_spec, &mut template);
        let mut spec = Vec::new();
        bytes_field(6, &template, &mut spec);
        int_field(7, 0, &mut spec);
        let mut meta = Vec::new();
        bytes_field(1, b"hello", &mut meta);
        let mut job = Vec::new();
        bytes_field(1, &meta, &mut job);
        bytes_field(2, &spec, &mut job);
        let mut tm = Vec::new();
        bytes_field(1, b"batch/v1", &mut tm);
        bytes_field(2, b"Job", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &job, &mut body);
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
                   "spec": {"backoffLimit": 0, "template": {"metadata": {}, "spec": {
                       "volumes": [{"name": "conf", "configMap": {"name": "cfg"}}],
                       "containers": [{"name": "hello", "image": "busybox",
                                       "command": ["/bin/sh", "-c", "echo hi"], "resources": {}}],
                       "restartPolicy": "Never"}}}})
        );
    }
}
