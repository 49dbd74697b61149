"""The official Python kubernetes client's apps/v1 and batch/v1 calls against an xkube
apiserver (kubeconfig path in argv[1]): what the client's own e2e suites for apps and batch
exercise (create, read back field by field, delete with a body), plus scale, list by label and
the Background-propagation answer. Written for xkube; the upstream e2e files are not on PyPI
and GitHub is not reachable from the CI machines."""
import sys
import uuid

from kubernetes import client, config

config.load_kube_config(sys.argv[1])
apps = client.AppsV1Api()
batch = client.BatchV1Api()

name = "nginx-deployment-" + str(uuid.uuid4())
deployment = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
             "template": {"metadata": {"labels": {"app": "nginx"}},
                          "spec": {"containers": [{"name": "nginx", "image": "nginx:1.15.4",
                                                   "ports": [{"containerPort": 80}]}]}}},
}
apps.create_namespaced_deployment(body=deployment, namespace="default")
d = apps.read_namespaced_deployment(name, "default")
assert d.metadata.name == name
assert d.spec.replicas == 3
assert d.spec.selector.match_labels["app"] == "nginx"
assert d.spec.template.spec.containers[0].image == "nginx:1.15.4"
assert d.spec.template.spec.containers[0].ports[0].container_port == 80
# Defaults the client reads back typed.
assert d.spec.strategy.type == "RollingUpdate", d.spec.strategy
assert d.spec.strategy.rolling_update.max_surge == "25%", d.spec.strategy
assert d.spec.revision_history_limit == 10 and d.spec.progress_deadline_seconds == 600
scale = apps.patch_namespaced_deployment_scale(name, "default", {"spec": {"replicas": 5}})
assert scale.spec.replicas == 5, scale
assert scale.status.selector == "app=nginx", scale.status
assert apps.read_namespaced_deployment_scale(name, "default").spec.replicas == 5
listed = apps.list_namespaced_deployment("default", label_selector="")
assert name in [x.metadata.name for x in listed.items]
apps.delete_namespaced_deployment(name, "default", body=client.V1DeleteOptions())

rs_name = "rs-" + str(uuid.uuid4())[:8]
rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": rs_name},
      "spec": {"replicas": 2, "selector": {"matchLabels": {"app": rs_name}},
               "template": {"metadata": {"labels": {"app": rs_name}},
                            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
apps.create_namespaced_replica_set("default", rs)
assert apps.read_namespaced_replica_set(rs_name, "default").spec.replicas == 2
apps.delete_namespaced_replica_set(rs_name, "default")

ds_name = "nginx-app-" + str(uuid.uuid4())
daemonset = {
    "apiVersion": "apps/v1", "kind": "DaemonSet",
    "metadata": {"labels": {"app": "nginx"}, "name": ds_name},
    "spec": {"selector": {"matchLabels": {"app": "nginx"}},
             "template": {"metadata": {"labels": {"app": "nginx"}, "name": ds_name},
                          "spec": {"containers": [{"name": "nginx-app", "image": "nginx:1.15.4"}]}},
             "updateStrategy": {"type": "RollingUpdate"}},
}
apps.create_namespaced_daemon_set("default", body=daemonset)
ds = apps.read_namespaced_daemon_set(ds_name, "default")
assert ds.spec.template.spec.containers[0].name == "nginx-app"
apps.delete_namespaced_daemon_set(ds_name, "default", body=client.V1DeleteOptions())

job_name = "test-job-" + str(uuid.uuid4())
job = {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": job_name},
       "spec": {"template": {"metadata": {"name": job_name},
                             "spec": {"containers": [{"image": "busybox", "name": job_name,
                                                      "command": ["sh", "-c", "sleep 5"]}],
                                      "restartPolicy": "Never"}}}}
created = batch.create_namespaced_job(body=job, namespace="default")
assert created.metadata.name == job_name
j = batch.read_namespaced_job(name=job_name, namespace="default")
assert j.spec.template.spec.containers[0].command == ["sh", "-c", "sleep 5"]
assert j.spec.template.spec.restart_policy == "Never"
assert j.spec.backoff_limit == 6 and j.spec.completions == 1 and j.spec.parallelism == 1
deleted = batch.delete_namespaced_job(name=job_name, namespace="default",
                                      body={"propagationPolicy": "Background"})
assert isinstance(deleted, dict) and deleted["kind"] in ("Job", "Status"), deleted

cj_name = "cron-" + str(uuid.uuid4())[:8]
cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": cj_name},
        "spec": {"schedule": "*/1 * * * *",
                 "jobTemplate": {"spec": {"template": {"spec": {
                     "containers": [{"name": "c", "image": "busybox"}],
                     "restartPolicy": "OnFailure"}}}}}}
batch.create_namespaced_cron_job("default", cron)
c = batch.read_namespaced_cron_job(cj_name, "default")
assert c.spec.schedule == "*/1 * * * *" and c.spec.concurrency_policy == "Allow", c.spec
batch.delete_namespaced_cron_job(cj_name, "default")
print("ok")
