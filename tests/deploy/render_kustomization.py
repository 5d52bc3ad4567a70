"""Render a plain Kustomize base, as `kubectl kustomize DIR` would, without kubectl.

Plain means: a kustomization.yaml with `resources:` naming YAML files beside it (one or more
documents each) and nothing else. Any other field (patches, generators, images, a remote or
directory resource) is refused with an error naming it, rather than rendered wrongly: such a
base needs the real kustomize.

Usage: python render_kustomization.py DIR OUT.yaml
Writes the documents to OUT.yaml (for kubernetes-validate) and prints them as one JSON array.
"""

import json
import sys
from pathlib import Path

import yaml

ALLOWED = {"apiVersion", "kind", "resources"}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def render(base):
    path = base / "kustomization.yaml"
    if not path.is_file():
        fail(f"{path} not found")
    kustomization = yaml.safe_load(path.read_text()) or {}
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        fail(f"{path}: kind must be Kustomization")
    unsupported = sorted(set(kustomization) - ALLOWED)
    if unsupported:
        fail(f"{path}: {', '.join(unsupported)} not supported by this renderer; use kustomize")
    documents = []
    seen = set()
    for name in kustomization.get("resources") or []:
        resource = base / name
        if "://" in name or not resource.is_file():
            fail(f"{path}: resource {name} is not a file beside it")
        for document in yaml.safe_load_all(resource.read_text()):
            if document is None:
                continue
            for key in ("apiVersion", "kind", "metadata"):
                if key not in document:
                    fail(f"{resource}: a document has no {key}")
            ident = (document["apiVersion"], document["kind"], document["metadata"].get("name"))
            if ident in seen:
                fail(f"{resource}: {ident[1]} {ident[2]} is defined twice")
            seen.add(ident)
            documents.append(document)
    return documents


def main():
    if len(sys.argv) != 3:
        fail("usage: render_kustomization.py DIR OUT.yaml")
    documents = render(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(yaml.safe_dump_all(documents, sort_keys=False))
    json.dump(documents, sys.stdout)


if __name__ == "__main__":
    main()
