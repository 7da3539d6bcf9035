"""The lineage around one version as a drawn graph: versions and runs in columns (inputs to
the left, users to the right), each node a link, laid out on the server as SVG geometry.

It follows the same links as `artfs lineage` (run_cli.py): a version's `logged_by` run and
that run's inputs upstream, the runs that used it and their outputs downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..names import parse_ref
from ..registry import Registry, RunRecord, Version

#: Runs followed each way from the version: a pipeline's usual reach without a huge drawing.
DEPTH = 2
#: The most a page may ask for (`?depth=`): each level may read a run and its versions.
MAX_DEPTH = 6
#: Nodes drawn per column; the rest are counted under it.
COLUMN_NODES = 12
NODE_W, NODE_H = 160, 44
COL_GAP, ROW_GAP = 40, 14
MARGIN = 8


@dataclass
class Node:
    id: str
    kind: str  # "version" or "run"
    label: str
    detail: str
    href: str
    column: int
    current: bool = False
    x: float = 0
    y: float = 0


@dataclass
class Edge:
    src: str
    dst: str
    path: str = ""


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    #: column → nodes left out of it.
    hidden: dict[int, int] = field(default_factory=dict)
    width: float = 0
    height: float = 0
    node_w: int = NODE_W
    node_h: int = NODE_H
    more: list[tuple[float, float, str]] = field(default_factory=list)


def version_href(qualified: str) -> str:
    path, _, label = qualified.partition(":")
    return f"/{path}/{label}"


def run_href(run_path: str) -> str:
    entity, project, run_id = run_path.split("/")
    return f"/{entity}/{project}/@runs/{run_id}"


class GraphBuilder:
    def __init__(self, reg: Registry, center: Version) -> None:
        self.reg = reg
        self.center = center
        self.graph = Graph()
        self._columns: dict[int, int] = {}

    def _short(self, qualified: str) -> str:
        """A version's name without the entity and project they share with the page."""
        prefix = f"{self.center.entity}/{self.center.project}/"
        return qualified.removeprefix(prefix)

    def _add(self, node: Node) -> bool:
        """Place `node` unless already placed or its column is full; False when left out."""
        if node.id in self.graph.nodes:
            return True
        count = self._columns.get(node.column, 0)
        if count >= COLUMN_NODES:
            self.graph.hidden[node.column] = self.graph.hidden.get(node.column, 0) + 1
            return False
        self._columns[node.column] = count + 1
        self.graph.nodes[node.id] = node
        return True

    def _edge(self, src: str, dst: str) -> None:
        if src in self.graph.nodes and dst in self.graph.nodes and \
                not any(e.src == src and e.dst == dst for e in self.graph.edges):
            self.graph.edges.append(Edge(src, dst))

    def _version_node(self, qualified: str, column: int, current: bool = False) -> Node:
        return Node(f"v:{qualified}", "version", self._short(qualified), "",
                    version_href(qualified), column, current)

    def _run_node(self, path: str, run: RunRecord | None, column: int) -> Node:
        if run is None:
            return Node(f"r:{path}", "run", path.rsplit("/", 1)[1], "run record missing",
                        run_href(path), column)
        return Node(f"r:{path}", "run", run.name or run.id, f"{run.job_type} · {run.state}",
                    run_href(path), column)

    def _find_run(self, path: str) -> RunRecord | None:
        return self.reg.find_run(*path.split("/"))

    def _version(self, qualified: str) -> Version | None:
        """The version's record, deleted or not (lineage keeps naming deleted versions)."""
        entity, project, _ = qualified.split("/", 2)
        try:
            return self.reg.version(parse_ref(qualified, entity=entity, project=project),
                                    with_aliases=False, include_deleted=True)
        except LookupError:
            return None

    def _add_version(self, qualified: str, column: int, beside: str, upstream: bool
                     ) -> Version | None:
        """Draw `qualified` linked to the run `beside`; its record when it is new here, so
        the walk goes on from it."""
        node_id = f"v:{qualified}"
        known = node_id in self.graph.nodes
        node = self._version_node(qualified, column)
        if not self._add(node):
            return None
        self._edge(*((node_id, beside) if upstream else (beside, node_id)))
        if known:
            return None
        found = self._version(qualified)
        node.detail = "missing" if found is None else "deleted" if found.deleted else ""
        return found

    def build(self, depth: int = DEPTH) -> Graph:
        self._add(self._version_node(self.center.qualified, 0, current=True))
        frontier = [self.center]
        for level in range(1, depth + 1):
            next_frontier: list[Version] = []
            for v in frontier:
                if v.logged_by is None:
                    continue
                run = self._find_run(v.logged_by)
                node = self._run_node(v.logged_by, run, -(2 * level - 1))
                if not self._add(node):
                    continue
                self._edge(node.id, f"v:{v.qualified}")
                for qualified in run.inputs if run is not None else []:
                    found = self._add_version(qualified, -2 * level, node.id, upstream=True)
                    if found is not None:
                        next_frontier.append(found)
            frontier = next_frontier
        frontier = [self.center]
        for level in range(1, depth + 1):
            next_frontier = []
            for v in frontier:
                for run in self.reg.used_by(v):
                    path = f"{run.entity}/{run.project}/{run.id}"
                    node = self._run_node(path, run, 2 * level - 1)
                    known = node.id in self.graph.nodes
                    if not self._add(node):
                        continue
                    self._edge(f"v:{v.qualified}", node.id)
                    if known:
                        continue
                    for qualified in run.outputs:
                        found = self._add_version(qualified, 2 * level, node.id, upstream=False)
                        if found is not None:
                            next_frontier.append(found)
            frontier = next_frontier
        self._layout()
        return self.graph

    def _layout(self) -> None:
        g = self.graph
        columns = sorted({n.column for n in g.nodes.values()} | set(g.hidden))
        x_of = {c: MARGIN + i * (NODE_W + COL_GAP) for i, c in enumerate(columns)}
        rows: dict[int, int] = {}
        for node in g.nodes.values():
            row = rows.get(node.column, 0)
            rows[node.column] = row + 1
            node.x = x_of[node.column]
            node.y = MARGIN + row * (NODE_H + ROW_GAP)
        for column, count in g.hidden.items():
            y = MARGIN + rows.get(column, 0) * (NODE_H + ROW_GAP) + 14
            g.more.append((x_of[column] + NODE_W / 2, y, f"+{count} more"))
        tallest = max([*rows.values(), 1]) + (1 if g.hidden else 0)
        g.width = 2 * MARGIN + len(columns) * NODE_W + (len(columns) - 1) * COL_GAP
        g.height = 2 * MARGIN + tallest * NODE_H + (tallest - 1) * ROW_GAP
        for e in g.edges:
            a, b = g.nodes[e.src], g.nodes[e.dst]
            x1, y1 = a.x + NODE_W, a.y + NODE_H / 2
            x2, y2 = b.x, b.y + NODE_H / 2
            bend = max(COL_GAP / 2, abs(x2 - x1) / 2)
            e.path = f"M {x1} {y1} C {x1 + bend} {y1}, {x2 - bend} {y2}, {x2} {y2}"


def lineage_graph(reg: Registry, version: Version, depth: int = DEPTH) -> Graph:
    return GraphBuilder(reg, version).build(depth)
