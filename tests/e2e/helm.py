#!/usr/bin/env python3
"""Helm for Tally's chart tests, through helm-python-sdk (Helm's Go SDK, no helm binary).

    helm.py template CHART [--values JSON] [--name N] [--namespace NS]
        lints the chart (strict) and renders it like `helm template --include-crds`;
        prints {"lint": {...}, "documents": [{"source": PATH, "object": {...}}]},
        CRDs first, then the templates in Helm's install order.
    helm.py install CHART --kubeconfig K --name N --namespace NS [--values JSON]
                    [--storage secret|memory] [--timeout S] [--wait]
        installs a release (CRDs from the chart's crds/ first, as `helm install` does);
        prints {"name", "namespace", "revision", "status"}.
    helm.py uninstall --kubeconfig K --name N --namespace NS [--storage ...]

Exits 3 when helm-python-sdk is not installed (`pip install helm-python-sdk`).
"""

import argparse
import json
import sys

try:
    import helm_python as helm
    import yaml
except ImportError as error:  # the caller skips or fails, as it is told
    print(f"helm-python-sdk is not installed ({error}): pip install helm-python-sdk", file=sys.stderr)
    sys.exit(3)

# Helm's install order (pkg/release/util/kind_sorter.go), enough for this chart.
INSTALL_ORDER = [
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "Job",
]


def order(document):
    kind = document["object"].get("kind")
    return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)


def documents(source, text):
    for obj in yaml.safe_load_all(text):
        if obj:
            yield {"source": source, "object": obj}


def template(args):
    values = json.loads(args.values)
    lint = helm.lint(args.chart, values, strict=True, namespace=args.namespace)
    with helm.Chart.load(args.chart) as chart:
        crds = [d for crd in chart.crds for d in documents(crd["filename"], crd["data"])]
        rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    manifests = [
        d
        for source, text in sorted(rendered.items())
        if source.endswith((".yaml", ".yml", ".json"))
        for d in documents(source, text)
    ]
    manifests.sort(key=order)
    return {"lint": lint, "documents": crds + manifests}


def config(args):
    return helm.Config(
        kubeconfig_path=args.kubeconfig,
        namespace=args.namespace,
        storage_driver=args.storage,
    )


def install(args):
    with config(args) as cfg:
        release = cfg.install(
            args.chart,
            args.name,
            json.loads(args.values),
            namespace=args.namespace,
            timeout=args.timeout,
            wait="watcher" if args.wait else None,
        )
    return {key: release.get(key) for key in ["name", "namespace", "revision", "status"]}


def uninstall(args):
    with config(args) as cfg:
        cfg.uninstall(args.name, ignore_not_found=True, wait="watcher" if args.wait else None)
    return {"name": args.name}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ["template", "install", "uninstall"]:
        command = commands.add_parser(name)
        if name != "uninstall":
            command.add_argument("chart")
            command.add_argument("--values", default="{}", help="values as a JSON object")
        command.add_argument("--name", default="tally")
        command.add_argument("--namespace", default="default")
        if name != "template":
            command.add_argument("--kubeconfig", required=True)
            command.add_argument("--storage", default="secret", choices=["secret", "memory"])
            command.add_argument("--timeout", type=int, default=300)
            command.add_argument("--wait", action="store_true")
    args = parser.parse_args()
    try:
        result = {"template": template, "install": install, "uninstall": uninstall}[args.command](args)
    except helm.HelmError as error:
        print(f"helm {args.command}: {error}", file=sys.stderr)
        sys.exit(1)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
