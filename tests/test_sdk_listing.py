"""W&B names, listing and filtering versions (issue 12, items 3 and 4)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdk
from artfs import keys
from artfs.cli import main
from artfs.errors import ArtifactNotFound, InvalidFilter, TypeMismatch
from artfs.filters import compile_filter
from artfs.record_cache import RecordCache
from artfs.registry import Registry

ENTITY = "tester"


def log_version(name: str, data: str, *, metadata=None, aliases=None, project="my-project",
                type="model", description=None) -> sdk.Artifact:
    art = sdk.Artifact(name, type=type, description=description, metadata=metadata)
    with art.new_file("model.h5") as f:
        f.write(data)
    with sdk.init(job_type="train", project=project, entity="acme") as run:
        run.log_artifact(art, aliases=aliases)
    return art


# -- item 3: names as W&B returns them ----------------------------------------------------------
def test_a_logged_artifact_is_named_as_wandb_names_it(registry_url: str) -> None:
    art = log_version("bike-model", "w", metadata={"ap50": 0.9}, aliases=["best"],
                      description="first")
    for a in (art, sdk.Api().artifact("acme/my-project/bike-model:best")):
        assert a.name == a.source_name == "bike-model:v0"
        assert a.qualified_name == a.source_qualified_name == "acme/my-project/bike-model:v0"
        assert (a.version, a.source_version, a.entity, a.project) == (
            "v0", "v0", "acme", "my-project")
        assert (a.type, a.aliases, a.metadata, a.description) == (
            "model", ["best", "latest"], {"ap50": 0.9}, "first")
        assert len(a.digest) == 64 and a.size == 1 and a.file_count == 1
        assert a.state == "COMMITTED" and not a.is_draft()
        assert a.updated_at == a.created_at


def test_a_draft_has_its_bare_name_and_no_version(tmp_path: Path) -> None:
    art = sdk.Artifact("bike-model", type="model")
    assert (art.name, art.state, art.is_draft()) == ("bike-model", "PENDING", True)
    with pytest.raises(sdk.ArtifactStateError, match="bike-model.*draft"):
        art.version  # noqa: B018
    with pytest.raises(sdk.ArtifactStateError, match="draft"):
        art.qualified_name  # noqa: B018


def test_save_moves_updated_at_past_created_at(registry_url: str) -> None:
    log_version("bike-model", "w")
    a = sdk.Api().artifact("acme/my-project/bike-model:v0")
    time.sleep(0.01)
    a.description = "edited"
    a.save()
    got = sdk.Api().artifact("acme/my-project/bike-model:v0")
    assert got.updated_at > got.created_at and got.description == "edited"


# -- item 4: listing ----------------------------------------------------------------------------
#: ap50, tags, nested training settings, aliases of v0..v4 (latest is added to v4).
SPECS = [
    (0.50, ["a"], {"lr": 0.1}, []),
    (0.70, ["a", "b"], {"lr": 0.01}, ["candidate"]),
    (0.95, ["b"], {"lr": 0.01, "opt": "adam"}, ["best"]),
    (0.80, [], {"lr": 0.001}, []),
    (None, ["c"], {}, ["prod"]),
]


def metadata_of(i: int) -> dict:
    ap50, tags, nested, _ = SPECS[i]
    meta = {"index": i, "tags": tags, "train": nested, "run": f"run-{i}"}
    if ap50 is not None:
        meta["ap50"] = ap50
    return meta


@pytest.fixture
def five_versions(registry_url: str) -> list[sdk.Artifact]:
    return [log_version("bike-model", str(i), metadata=metadata_of(i),
                        aliases=SPECS[i][3] or None) for i in range(len(SPECS))]


def versions(filters=None, **kwargs) -> list[str]:
    return [a.version for a in sdk.Api().artifacts(
        "model", "acme/my-project/bike-model", filters=filters, **kwargs)]


def test_artifacts_lists_versions_newest_first_in_pages(five_versions) -> None:
    listing = sdk.Api().artifacts("model", "acme/my-project/bike-model", per_page=2)
    assert len(listing) == 5
    assert [a.version for a in listing] == ["v4", "v3", "v2", "v1", "v0"]
    assert listing[1].version == "v3" and listing[-1].version == "v0"
    assert [a.name for a in listing][:1] == ["bike-model:v4"]


FILTER_CASES = [
    ({"metadata.ap50": {"$gt": 0.9}}, ["v2"]),
    ({"metadata.ap50": {"$gte": 0.8}}, ["v3", "v2"]),
    ({"metadata.ap50": {"$lt": 0.7}}, ["v0"]),
    ({"metadata.ap50": {"$lte": 0.7}}, ["v1", "v0"]),
    ({"metadata.ap50": {"$eq": 0.5}}, ["v0"]),
    ({"metadata.ap50": 0.5}, ["v0"]),
    ({"metadata.ap50": {"$ne": 0.5}}, ["v4", "v3", "v2", "v1"]),  # $ne matches a missing key
    ({"metadata.index": {"$in": [1, 3, 7]}}, ["v3", "v1"]),
    ({"metadata.index": {"$nin": [1, 3]}}, ["v4", "v2", "v0"]),
    ({"metadata.ap50": {"$exists": False}}, ["v4"]),
    ({"metadata.ap50": {"$exists": True}}, ["v3", "v2", "v1", "v0"]),
    ({"metadata.run": {"$regex": "run-[34]"}}, ["v4", "v3"]),
    ({"metadata.run": {"$regex": "RUN-0", "$options": "i"}}, ["v0"]),
    ({"metadata.train.lr": 0.01}, ["v2", "v1"]),  # dotted path into nested metadata
    ({"metadata.train.opt": {"$exists": True}}, ["v2"]),
    ({"metadata.tags": "b"}, ["v2", "v1"]),  # a list matches when an element does
    ({"metadata.tags": {"$in": ["c", "a"]}}, ["v4", "v1", "v0"]),
    ({"metadata.tags": []}, ["v3"]),
    ({"$and": [{"metadata.ap50": {"$gt": 0.6}}, {"metadata.train.lr": 0.01}]}, ["v2", "v1"]),
    ({"$or": [{"metadata.ap50": {"$gt": 0.9}}, {"aliases": "prod"}]}, ["v4", "v2"]),
    ({"aliases": "best"}, ["v2"]),
    ({"aliases": {"$in": ["candidate", "prod"]}}, ["v4", "v1"]),
    ({"aliases": {"$nin": ["latest"]}}, ["v3", "v2", "v1", "v0"]),
    ({"aliases": {"$ne": "latest"}}, ["v3", "v2", "v1", "v0"]),
    ({"version": "v3"}, ["v3"]),
    ({"version": {"$gte": "v2", "$lt": "v4"}}, ["v3", "v2"]),
    ({"version": {"$regex": "^v[01]$"}}, ["v1", "v0"]),
    ({"size": 1}, ["v4", "v3", "v2", "v1", "v0"]),
    ({"size": {"$gt": 1}}, []),
    ({"created_at": {"$gt": "2000-01-01T00:00:00Z"}}, ["v4", "v3", "v2", "v1", "v0"]),
    ({"created_at": {"$lt": "2000-01-01"}}, []),
    ({"metadata.ap50": {"$gt": "0.9"}}, []),  # a string never compares with a number
]


@pytest.mark.parametrize(("spec", "expected"), FILTER_CASES, ids=[json.dumps(c[0]) for c in
                                                                  FILTER_CASES])
def test_filter_operators(spec, expected) -> None:
    records = [{"version": i, "aliases": SPECS[i][3] + (["latest"] if i == 4 else []),
                "created_at": "2026-11-26T15:00:00+00:00", "size": 1, "metadata": metadata_of(i)}
               for i in range(len(SPECS))]
    flt = compile_filter(spec)
    assert [f"v{r['version']}" for r in reversed(records) if flt.matches(r)] == expected


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_api_filters_agree_with_the_engine_on_every_operator(five_versions) -> None:
    for spec, expected in FILTER_CASES:
        assert versions(spec) == expected, spec


def test_filters_on_every_store(five_versions) -> None:
    spec = {"$or": [{"metadata.ap50": {"$gte": 0.8}}, {"aliases": "prod"}]}
    assert versions(spec) == ["v4", "v3", "v2"]
    assert len(sdk.Api().artifacts("model", "acme/my-project/bike-model", filters=spec)) == 3


def test_a_filter_sees_metadata_edited_after_commit(five_versions) -> None:
    a = sdk.Api().artifact("acme/my-project/bike-model:v0")
    a.metadata["ap50"] = 0.99
    a.save()
    assert versions({"metadata.ap50": {"$gt": 0.9}}) == ["v2", "v0"]


@pytest.mark.parametrize(("spec", "culprit"), [
    ({"metadata.x": {"$near": 1}}, r"\$near"),
    ({"$nor": [{"size": 1}]}, r"\$nor"),
    ({"colour": "red"}, "colour"),
    ({"metadata.ap50": {"$in": 0.5}}, r"\$in"),
    ({"metadata.run": {"$regex": "("}}, r"\(.*not a valid pattern"),
    ({"metadata.run": {"$options": "i"}}, r"\$options"),
    ({"$and": {"size": 1}}, r"\$and"),
    ({"$or": []}, r"\$or"),
    ({"metadata.ap50": {"$exists": "yes"}}, r"\$exists"),
    ({"version": "latest"}, "latest"),
    ({"created_at": {"$gt": "yesterday"}}, "yesterday"),
    ([{"size": 1}], "JSON object"),
])
def test_a_bad_filter_is_refused_naming_the_culprit(spec, culprit) -> None:
    with pytest.raises(InvalidFilter, match=culprit):
        compile_filter(spec)


def test_a_bad_filter_fails_before_reading_the_registry(tmp_path: Path) -> None:
    with pytest.raises(InvalidFilter, match=r"\$near"):
        sdk.Api().artifacts("model", "acme/p/none", filters={"metadata.x": {"$near": 1}})
    assert not (tmp_path / "default-registry" / "entities").exists()


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_artifacts_of_a_missing_name_or_other_type_say_so(five_versions) -> None:
    with pytest.raises(ArtifactNotFound, match="bike-modell"):
        sdk.Api().artifacts("model", "acme/my-project/bike-modell")
    with pytest.raises(TypeMismatch, match="'model'"):
        sdk.Api().artifacts("dataset", "acme/my-project/bike-model")


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_exists_collections_and_types(registry_url: str) -> None:
    log_version("bike-model", "m")
    log_version("bike-data", "d", type="dataset")
    api = sdk.Api()
    assert api.artifact_exists("acme/my-project/bike-model:v0")
    assert api.artifact_exists("acme/my-project/bike-model:latest", type="model")
    assert not api.artifact_exists("acme/my-project/bike-model:v1")
    assert not api.artifact_exists("acme/my-project/bike-model:v0", type="dataset")
    assert not api.artifact_exists("acme/my-project/nothing")
    assert api.artifact_collection_exists("acme/my-project/bike-model", "model")
    assert not api.artifact_collection_exists("acme/my-project/bike-model", "dataset")
    assert not api.artifact_collection_exists("acme/my-project/nothing", "model")
    assert [c.name for c in api.artifact_collections("acme/my-project", "model")] == [
        "bike-model"]
    assert [t.name for t in api.artifact_types("acme/my-project")] == ["dataset", "model"]
    coll = api.artifact_collection("dataset", "acme/my-project/bike-data")
    assert [a.version for a in coll.artifacts()] == ["v0"]
    assert coll.aliases == ["latest"]


# -- what filtering costs on S3, and its copies of records ---------------------------------------
@pytest.fixture
def s3_reads(five_versions, registry_url: str) -> Iterator[tuple[sdk.Api, Counter]]:
    """An Api on its own registry, and the requests it sends: (operation, "records" for
    version records and their edits, else "other")."""
    reg = Registry(registry_url)
    seen: Counter = Counter()

    def count(params, model, **_):
        key = params.get("Key", params.get("Prefix", ""))
        seen[(model.name, "records" if "/versions/" in key or "/meta/" in key else "other")] += 1

    reg.store._client.meta.events.register("before-parameter-build.s3", count)
    yield sdk.Api(registry=reg), seen
    reg.close()


def listed(api: sdk.Api, spec) -> list[str]:
    return [a.version for a in api.artifacts("model", "acme/my-project/bike-model",
                                             filters=spec)]


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_a_bad_filter_sends_no_request_and_changes_nothing(s3_reads) -> None:
    api, seen = s3_reads
    before = listed(api, {"metadata.ap50": {"$exists": True}})
    seen.clear()
    with pytest.raises(InvalidFilter, match=r"\$near"):
        api.artifacts("model", "acme/my-project/bike-model", filters={"metadata.x": {"$near": 1}})
    assert seen == Counter()
    assert listed(api, {"metadata.ap50": {"$exists": True}}) == before


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_filtering_again_reads_only_the_records_written_since(s3_reads) -> None:
    api, seen = s3_reads
    spec = {"metadata.ap50": {"$gt": 0.6}}
    assert listed(api, spec) == ["v3", "v2", "v1"]
    assert seen[("GetObject", "records")] == 5
    seen.clear()
    assert listed(api, spec) == ["v3", "v2", "v1"]
    assert seen[("GetObject", "records")] == 0  # the listings' tokens match the copies
    assert seen[("ListObjectsV2", "records")] == 2  # versions/ and meta/

    v0 = api.artifact("acme/my-project/bike-model:v0")
    v0.metadata["ap50"] = 0.99
    v0.save()
    api.artifact("acme/my-project/bike-model:v1").delete(delete_aliases=True)
    # v3's record rewritten behind the SDK's back: another token in the listing.
    store = api._registry.store
    key = keys.artifact("acme", "my-project", "bike-model").version(3)
    record = json.loads(store.get(key))
    record["metadata"]["ap50"] = 0.1
    store.put(key, json.dumps(record).encode())
    seen.clear()
    assert listed(api, spec) == ["v2", "v0"]  # never a stale copy
    assert seen[("GetObject", "records")] == 2  # v0's edit, v3's new record


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_record_copies_stay_within_their_share_of_the_cache(
        registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTFS_CACHE_SIZE", "16K")  # 1 KiB for records: about three of them
    for i in range(len(SPECS)):
        log_version("bike-model", str(i), metadata=metadata_of(i), aliases=SPECS[i][3] or None)
    spec = {"metadata.ap50": {"$gt": 0.6}}
    for _ in range(2):
        assert versions(spec) == ["v3", "v2", "v1"]
    copies = RecordCache.beside(tmp_path / "cache", 16 * 1024)
    assert copies.limit == 1024 and 0 < copies.size() <= 1024


# -- the command line ---------------------------------------------------------------------------
def artfs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_ls_filter_prints_the_matching_versions(five_versions, capsys) -> None:
    code, out, err = artfs(capsys, "ls", "acme/my-project/bike-model", "--filter",
                           '{"metadata.ap50": {"$gt": 0.75}}')
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["v2", "v3"]
    assert out.splitlines()[0].endswith("best")


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
@pytest.mark.parametrize(("argv", "culprit"), [
    (["acme/my-project/bike-model", "--filter", '{"metadata.x": {"$near": 1}}'], "$near"),
    (["acme/my-project/bike-model", "--filter", "{not json"], "--filter is not valid JSON"),
    (["acme/my-project", "--filter", '{"size": 1}'], "ENTITY/PROJECT/NAME"),
])
def test_ls_with_a_bad_filter_names_it_and_fails(five_versions, capsys, argv, culprit) -> None:
    code, out, err = artfs(capsys, "ls", *argv)
    assert code != 0 and culprit in err and out == ""
