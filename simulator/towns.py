"""Towns: SUMO street networks a provider uploads, imported in a worker, named by id.

The upload is only stored (size and per-organization bounds checked); a Celery task parses it
safely (:func:`simulator.model.sumo.import_sumo_net`: no DTD, no entities, a bounded gzip),
checks that it makes a model within ``SIMULATION_MAX_CELLS`` and stores the imported topology
as JSON with its warnings. Simulations name a ready town by id (``{"town": ID}``) and build
from that JSON: no XML is read after the import, and never a path on this server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import Organization

from .model import ModelConfigError, ModelParams, TopologyError, TrafficModel
from .model.serialize import topology_from_json, topology_to_json
from .model.sumo import fit_to_time_step, import_sumo_net
from .model.topology import Topology as ModelTopology
from .models import Simulation, Topology, Town, TownStatus

logger = logging.getLogger(__name__)

PATH_REFUSED = (
    "SUMO networks are not read from paths on the server: upload the .net.xml as a town "
    '(POST /api/v1/orgs/<org>/towns/) and name it with {"town": ID}.'
)
_LIGHT_FIELDS = ("source", "topology", "layout")  # large columns lists never need
# A client names its file: NUL (which PostgreSQL refuses in text) and other control characters
# are dropped before it is stored or shown.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TownError(Exception):
    """An upload or change refused; the subclass says why (the API maps each to a status)."""


class TownTooLarge(TownError):
    """The file is over ``TOWN_MAX_BYTES``."""


class TownLimitReached(TownError):
    """The organization holds as many towns, or bytes of towns, as it may."""


class TownInUse(TownError):
    """A simulation runs on the town: it cannot be deleted."""


class TownNotUsable(ValueError):
    """A simulation names a town it may not use: unknown, another organization's, not ready."""


# --- Selectors --------------------------------------------------------------------------------


def towns_visible_to(*, organization_id: int) -> QuerySet[Town]:
    """The organization's own towns and the built-in ones, without their large columns."""
    return Town.objects.filter(
        Q(organization_id=organization_id) | Q(organization__isnull=True)
    ).defer(*_LIGHT_FIELDS)


def town_get_for_org(*, organization_id: int, town_id: int) -> Town:
    """A town the organization may see; ``Town.DoesNotExist`` otherwise (also if foreign)."""
    return towns_visible_to(organization_id=organization_id).get(pk=town_id)


def town_usage(*, organization_id: int) -> tuple[int, int]:
    """How many towns the organization holds, and their bytes (what its bounds count)."""
    usage = Town.objects.filter(organization_id=organization_id).aggregate(
        count=Count("pk"), size=Sum("size_bytes")
    )
    return usage["count"], usage["size"] or 0


def town_users(*, town_id: int) -> QuerySet[Simulation]:
    """Simulations that run on the town."""
    return Simulation.objects.filter(topology=Topology.SUMO, topology_options__town=town_id)


# --- Upload, import, delete -------------------------------------------------------------------


def town_default_name(file_name: str) -> str:
    """``berlin.net.xml.gz`` → ``berlin``."""
    stem = _CONTROL.sub("", file_name).rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    for suffix in (".gz", ".xml", ".net"):
        stem = stem.removesuffix(suffix)
    return stem[:100] or "town"


def town_upload(*, organization_id: int, name: str, file_name: str, data: bytes) -> Town:
    """Store an uploaded network as a processing town and queue its import.

    Refused (:class:`TownTooLarge`, :class:`TownLimitReached`, :class:`TownError`) before
    anything is stored: over the size limit, past the organization's bounds, or not XML or
    gzip at all. Everything else is the worker's to judge.
    """
    if len(data) > settings.TOWN_MAX_BYTES:
        raise TownTooLarge(
            f"The file is {len(data):,} bytes; a town may have at most "
            f"{settings.TOWN_MAX_BYTES:,} (TOWN_MAX_BYTES)."
        )
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not (head.startswith(b"<") or data.startswith(b"\x1f\x8b")):
        raise TownError("Not a SUMO network: upload a .net.xml file (or a gzip of one).")
    with transaction.atomic():
        # One upload at a time per organization, so two cannot both pass the bounds.
        Organization.objects.select_for_update().filter(pk=organization_id).first()
        count, size = town_usage(organization_id=organization_id)
        if count >= settings.TOWNS_PER_ORGANIZATION:
            raise TownLimitReached(
                f"This organization already has {count} towns, the most it may keep "
                f"(TOWNS_PER_ORGANIZATION): delete one first."
            )
        if size + len(data) > settings.TOWN_BYTES_PER_ORGANIZATION:
            raise TownLimitReached(
                f"This organization's towns would take {size + len(data):,} bytes, more than "
                f"the {settings.TOWN_BYTES_PER_ORGANIZATION:,} it may keep "
                f"(TOWN_BYTES_PER_ORGANIZATION): delete a town first."
            )
        town = Town.objects.create(
            organization_id=organization_id,
            name=name or town_default_name(file_name),
            file_name=_CONTROL.sub("", file_name)[:255],
            source=data,
            size_bytes=len(data),
        )
        transaction.on_commit(lambda: _queue_import(town.pk))
    return town


def _queue_import(town_id: int) -> None:
    from .tasks import town_import

    town_import.delay(town_id)


def town_import(*, town_id: int) -> str | None:
    """Import a processing town (the Celery task's body): ready with its topology, warnings
    and summary, or failed with the reason. Returns the new status; None when the town is not
    processing (deleted, or a duplicate delivery of the task)."""
    town = Town.objects.filter(pk=town_id, status=TownStatus.PROCESSING).first()
    if town is None:
        return None
    try:
        result = _import(bytes(town.source), name=town.name)
    except SoftTimeLimitExceeded:
        return _finish(
            town_id,
            status=TownStatus.FAILED,
            error=f"The import took longer than {settings.TOWN_IMPORT_TIME_LIMIT_SECONDS} s "
            f"(TOWN_IMPORT_TIME_LIMIT_SECONDS): the network is too large or too complex.",
        )
    except ModelConfigError as error:
        return _finish(town_id, status=TownStatus.FAILED, error=str(error))
    except MemoryError:
        return _finish(town_id, status=TownStatus.FAILED, error="The network is too large.")
    except Exception:
        # A file the importer did not foresee must still end the wait, not leave it processing.
        logger.exception("town %s: import failed", town_id)
        return _finish(
            town_id,
            status=TownStatus.FAILED,
            error="The file could not be imported (an internal error, logged for the operator).",
        )
    return _finish(town_id, status=TownStatus.READY, **result)


def _import(data: bytes, *, name: str) -> dict[str, Any]:
    """Parse, check that it runs within the cell limit at the default step, and describe."""
    imported = import_sumo_net(
        data,
        name=name,
        max_xml_bytes=settings.TOWN_MAX_BYTES,
        max_phase_seconds=float(settings.TOWN_MAX_PHASE_SECONDS),
    )
    topology = imported.topology
    if not topology.streets:
        raise TopologyError("The network has no street that cars may use.")
    params = ModelParams(backend="numpy")  # no JIT in an import
    model = TrafficModel(
        fit_to_time_step(topology, params.dt), params, max_cells=settings.SIMULATION_MAX_CELLS
    )
    model.step(10)  # it runs
    warnings = topology.meta.pop("warnings", [])
    nodes = {s.from_node for s in topology.streets} | {s.to_node for s in topology.streets}
    summary = {
        "streets": len(topology.streets),
        "junctions": len(nodes),
        "signals": len(topology.signals),
        "sources": topology.meta.get("sources", 0),
        "exits": topology.meta.get("exits", 0),
        "lane_km": round(sum(s.length * s.lanes for s in topology.streets) / 1000, 3),
        "cells": model.n_cells,  # at the default 1 s step
    }
    layout = {n: [x, y] for n, (x, y) in imported.positions.items() if n in nodes}
    return {
        "topology": topology_to_json(topology),
        "layout": layout,
        "warnings": warnings,
        "summary": summary,
    }


def town_import_failed(*, town_id: int, error: str) -> str | None:
    """End a processing town's import as failed with ``error`` (its worker was killed)."""
    return _finish(town_id, status=TownStatus.FAILED, error=error)


def _finish(town_id: int, *, status: str, **fields: Any) -> str | None:
    # Only a town still processing: one deleted meanwhile stays deleted.
    done = Town.objects.filter(pk=town_id, status=TownStatus.PROCESSING).update(
        status=status, imported_at=timezone.now(), **fields
    )
    return status if done else None


def town_delete(*, town: Town) -> None:
    """Delete the organization's town; :class:`TownInUse` while a simulation names it."""
    users = list(town_users(town_id=town.pk).values_list("name", flat=True)[:5])
    if users:
        raise TownInUse(
            f"Simulations run on this town ({', '.join(users)}): point them at another "
            f"topology or delete them first."
        )
    town.delete()


# --- What simulations use ---------------------------------------------------------------------


def town_id_of(options: Mapping[str, Any]) -> int:
    """The town a SUMO simulation's options name; :class:`TopologyError` for anything else
    (a server path above all)."""
    if "path" in options:
        raise TopologyError(PATH_REFUSED)
    town_id = options.get("town")
    if isinstance(town_id, bool) or not isinstance(town_id, int):
        raise TopologyError('A SUMO simulation names an uploaded town: {"town": ID}.')
    return town_id


def town_check_usable(*, organization_id: int, town_id: int) -> None:
    """:class:`TownNotUsable` unless the organization may run a simulation on the town now:
    its own or a built-in one, and ready. Another organization's town is "no such town"."""
    town = (
        towns_visible_to(organization_id=organization_id)
        .filter(pk=town_id)
        .only("status", "error")
        .first()
    )
    if town is None:
        raise TownNotUsable(f"No town {town_id} in this organization.")
    if town.status == TownStatus.PROCESSING:
        raise TownNotUsable(f"Town {town_id} is still being imported: try again when it is ready.")
    if town.status == TownStatus.FAILED:
        raise TownNotUsable(f"Town {town_id} could not be imported: {town.error}")


def town_topology(options: Mapping[str, Any], *, dt: float) -> ModelTopology:
    """The topology of the ready town ``options`` names, fitted to the time step ``dt``."""
    town_id = town_id_of(options)
    row = Town.objects.filter(pk=town_id).values_list("status", "topology").first()
    if row is None:
        raise TopologyError(f"No town {town_id}.")
    status, stored = row
    if status != TownStatus.READY or stored is None:
        raise TopologyError(f"Town {town_id} is not ready ({status}).")
    return fit_to_time_step(topology_from_json(stored), dt)


def town_layout(options: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Junction coordinates of the town ``options`` names (empty when it has none)."""
    try:
        town_id = town_id_of(options)
    except TopologyError:
        return {}
    layout = Town.objects.filter(pk=town_id).values_list("layout", flat=True).first() or {}
    return {node: (float(x), float(y)) for node, (x, y) in layout.items()}
