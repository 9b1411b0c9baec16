"""mkdocs hooks: the HTTP API reference, generated at build time from the web process itself;
and the CLI reference's options without a default shown as such.

Guarantees: `reference/http-api.md` is never in git; each build renders it from the app that
`triage.admin.web.create_app` builds on default settings, so every route the app serves appears
in it (the OpenAPI schema's routes with their summary, parameters, request body fields and
responses; the routes outside the schema, `/metrics` and the dashboard's pages, by method and
path). Building it needs no Redis: the client connects lazily and the schema reads none.

mkdocs-click prints click's "no default" marker (`Sentinel.UNSET`, click >= 8.3) as if it were a
default; pages show an empty cell instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PAGE = "reference/http-api.md"
METHODS = ("get", "post", "put", "patch", "delete")
NO_DEFAULT = "<td><code>Sentinel.UNSET</code></td>"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated page to the site's files."""
    files.append(File.generated(config, PAGE, content=render()))
    return files


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Click's marker for "no default" is not a default: an empty cell."""
    return html.replace(NO_DEFAULT, "<td></td>")


def build_app() -> Any:
    """The web process's app on default settings, with a token minted for it (none is needed)."""
    from triage.admin import Admin
    from triage.admin.web import create_app

    return create_app(Admin(), token=None)


def render() -> str:
    """The whole page, Markdown."""
    app = build_app()
    schema = app.openapi()
    out = [
        "# HTTP API",
        "",
        "Generated from the OpenAPI schema of `triage serve` (`GET /openapi.json` serves the same).",
        "Every `/api/v1/admin/...` route needs `Authorization: Bearer $TRIAGE_ADMIN_TOKEN`;",
        "see [the web process](../operations/web.md) and [Security](../operations/security.md).",
        "",
        "## Routes",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    for path, method, op in operations(schema):
        out.append(f"| `{method.upper()}` | [`{path}`](#{anchor(method, path)}) | {op.get('summary', '')} |")
    out += ["", "### Outside the schema", ""]
    out += [
        "These routes are served too but are not part of the admin API's schema: `/metrics` (Prometheus",
        "text, the same token), `/openapi.json`, and the dashboard's pages (a session cookie from",
        "`/login`, see [the dashboard](../operations/dashboard.md)).",
        "",
        "| method | path |",
        "|---|---|",
    ]
    for methods, path in unlisted_routes(app, schema):
        out.append(f"| `{', '.join(methods)}` | `{path}` |")
    for path, method, op in operations(schema):
        out += ["", f"## `{method.upper()} {path}` {{#{anchor(method, path)}}}", ""]
        if op.get("summary"):
            out += [f"**{op['summary']}**", ""]
        if op.get("description"):
            out += [op["description"].strip(), ""]
        out += parameters(op.get("parameters", []), schema)
        out += request_body(op.get("requestBody"), schema)
        out += responses(op.get("responses", {}), schema)
    return "\n".join(out) + "\n"


def operations(schema: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def anchor(method: str, path: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in f"{method}-{path}".lower())
    return "-".join(part for part in slug.split("-") if part)


def unlisted_routes(app: Any, schema: Mapping[str, Any]) -> list[tuple[list[str], str]]:
    listed = {(m.upper(), p) for p, m, _ in operations(schema)}
    found: list[tuple[list[str], str]] = []

    def walk(routes: Any, prefix: str = "") -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes, prefix)
                continue
            path = prefix + getattr(route, "path", "")
            methods = sorted(m for m in (getattr(route, "methods", None) or []) if m != "HEAD") or ["GET"]
            if all((m, path) not in listed for m in methods):
                found.append((methods, path + ("/…" if type(route).__name__ == "Mount" else "")))

    walk(app.routes)
    return found


def resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    found: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return resolve(found, schema)


def type_of(node: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    node = resolve(node, schema)
    if "anyOf" in node:
        kinds = [type_of(k, schema) for k in node["anyOf"] if k.get("type") != "null"]
        return " or ".join(kinds) + (" or null" if any(k.get("type") == "null" for k in node["anyOf"]) else "")
    kind = node.get("type", node.get("title", "object"))
    if kind == "array":
        return f"array of {type_of(node.get('items', {}), schema)}"
    limits = [f"{k} {node[k]}" for k in ("minimum", "maximum", "minLength", "maxLength", "maxItems") if k in node]
    if "pattern" in node:
        limits.append(f"pattern `{node['pattern']}`")
    if "enum" in node:
        limits.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    return str(kind) + (f" ({', '.join(limits)})" if limits else "")


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def parameters(params: list[Mapping[str, Any]], schema: Mapping[str, Any]) -> list[str]:
    if not params:
        return []
    out = ["Parameters:", "", "| name | in | type | required | description |", "|---|---|---|---|---|"]
    for p in params:
        node = p.get("schema", {})
        desc = p.get("description") or resolve(node, schema).get("description", "")
        if not desc and "anyOf" in node:
            desc = next((k.get("description", "") for k in node["anyOf"] if k.get("description")), "")
        out.append(
            f"| `{p['name']}` | {p['in']} | {cell(type_of(node, schema))} | "
            f"{'yes' if p.get('required') else 'no'} | {cell(desc)} |"
        )
    return [*out, ""]


def request_body(body: Mapping[str, Any] | None, schema: Mapping[str, Any]) -> list[str]:
    if not body:
        return []
    content = body.get("content", {}).get("application/json", {})
    node = resolve(content.get("schema", {}), schema)
    out = [f"Request body (JSON, `{node.get('title', 'object')}`):", ""]
    props = node.get("properties", {})
    if not props:
        return [*out, f"`{json.dumps(node)}`", ""]
    out += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, prop in props.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        desc = prop.get("description") or next(
            (k.get("description", "") for k in prop.get("anyOf", []) if k.get("description")), ""
        )
        out.append(f"| `{name}` | {cell(type_of(prop, schema))} | {default} | {cell(desc)} |")
    if node.get("additionalProperties") is False:
        out += ["", "Any other field is refused (422)."]
    return [*out, ""]


def responses(answers: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    out = ["Responses:", "", "| status | meaning | body |", "|---|---|---|"]
    for status in sorted(answers):
        answer = answers[status]
        content = answer.get("content", {})
        body = ""
        for kind, media in content.items():
            node = media.get("schema", {})
            ref = node.get("$ref", "")
            body = f"`{ref.rsplit('/', 1)[-1]}`" if ref else f"`{kind}`"
        out.append(f"| {status} | {cell(answer.get('description', ''))} | {body} |")
    return [*out, ""]
