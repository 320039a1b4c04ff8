"""Bulk provisioning of devices from a CSV file: every row is checked first, then either all
rows are created (in one transaction, through `device_create`) or none.

The file format, as documented in the README ("Admin onboarding"):

- UTF-8 text (a byte-order mark is tolerated), comma-separated, at most `MAX_FILE_BYTES`
  and `MAX_ROWS` data rows.
- A header row naming exactly the columns `make,model,serial,merchant,store`, in any order
  (case and surrounding spaces do not matter).
- `merchant` and `store` are given by their exact name (case-sensitive, surrounding spaces
  ignored). The merchant name must be unambiguous within the tenant chosen for the import;
  the store is looked up among that merchant's stores. Names, not ids, because the people
  preparing these files work from spreadsheets of their merchants, not from our ids.
- An optional `certificate` column holds a device's client certificate (PEM, in a quoted
  cell spanning lines; v1.1 §15), enrolled with the device; blank: none.
- Blank lines are ignored. Line numbers in errors are those of the file, the header being 1.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.functions import Lower

from accounts.audit import audit_record
from accounts.errors import Invalid, NotFound, RateLimited
from accounts.models import NAME_MAX_LENGTH, Merchant, Store, Tenant
from accounts.permissions import Kind
from accounts.scope import Principal, merchants_in_scope, stores_in_scope, tenants_in_scope
from accounts.services import require_authority
from connector import certificates, serial_refusals
from connector.models import Device, DeviceCertificate
from connector.services import device_create

COLUMNS = ("make", "model", "serial", "merchant", "store")
OPTIONAL_COLUMNS = ("certificate",)
DEVICE_COLUMNS = ("make", "model", "serial")
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_ROWS = 5000
# Lookups by name go to the database in slices, so that a big file stays within the
# parameter limits of every backend.
_CHUNK = 500


@dataclass(frozen=True)
class RowError:
    """Why one line of the file (or, with `line` None, the whole file) was refused."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason


@dataclass(frozen=True)
class ImportResult:
    created: int = 0
    device_ids: tuple[int, ...] = ()
    errors: tuple[RowError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _Row:
    line: int
    values: dict[str, str]
    merchant: Merchant | None = None
    store: Store | None = None
    problems: list[str] = field(default_factory=list)
    fingerprint: str = ""  # of the row's certificate, when it has one


class _RowFailed(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def devices_import_csv(*, tenant: Tenant, file: IO[bytes] | bytes, actor: Principal) -> ImportResult:
    """Import devices into `tenant` from a CSV file. Nothing is created unless every row is good."""
    require_authority(actor, Kind.DEVICE)
    if not tenants_in_scope(principal=actor).filter(pk=tenant.pk).exists():
        raise NotFound("No such tenant.")
    wait = serial_refusals.retry_after(actor=actor)
    if wait is not None:
        raise RateLimited(f"Too many refused serial numbers; try again in {wait} seconds.", retry_after=wait)
    text, problem = _read_text(file)
    if problem is not None:
        return _failed([problem])
    rows, shape_errors, fatal = _parse(text)
    if fatal is not None:
        return _failed([fatal])
    _resolve_places(rows, tenant=tenant, actor=actor)
    _check_serials(rows, tenant=tenant)
    _check_certificates(rows)
    _serial_refusals_record(rows, tenant=tenant, actor=actor)
    bad = shape_errors + [RowError(row.line, "; ".join(row.problems)) for row in rows if row.problems]
    if bad:
        return _failed(sorted(bad, key=lambda error: error.line or 0))
    return _create(rows, tenant=tenant, actor=actor)


def _failed(errors: Iterable[RowError]) -> ImportResult:
    return ImportResult(errors=tuple(errors))


# --- reading -------------------------------------------------------------------------------


def _read_text(file: IO[bytes] | bytes) -> tuple[str, RowError | None]:
    data = file if isinstance(file, bytes) else file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return "", RowError(None, f"The file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB; split it.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        return "", RowError(line, "The file is not UTF-8 text (save it as 'CSV UTF-8').")
    if not text.strip():
        return "", RowError(None, f"The file is empty; it needs a header row {','.join(COLUMNS)} and device rows.")
    return text, None


def _parse(text: str) -> tuple[list[_Row], list[RowError], RowError | None]:
    """The well-shaped data rows (with the problems of their values), the rows of the wrong
    shape, and an error that makes the whole file unreadable (bad header, broken quoting)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as error:
        return [], [], RowError(reader.line_num, f"Unreadable CSV: {error}.")
    names = [name.strip().lower() for name in header]
    required = sorted(name for name in names if name not in OPTIONAL_COLUMNS)
    if required != sorted(COLUMNS) or len(set(names)) != len(names):
        message = f"The header must name the columns {','.join(COLUMNS)} (certificate optional)"
        return [], [], RowError(1, f"{message}; found {','.join(header)!r}.")
    rows: list[_Row] = []
    shape_errors: list[RowError] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            return [], [], RowError(reader.line_num, f"Unreadable CSV: {error}.")
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(names):
            shape_errors.append(RowError(reader.line_num, f"expected {len(names)} values, found {len(cells)}"))
            continue
        values = {name: cell.strip() for name, cell in zip(names, cells, strict=True)}
        rows.append(_Row(line=reader.line_num, values=values, problems=_value_problems(values)))
    if not rows and not shape_errors:
        return [], [], RowError(None, "The file has a header but no device rows.")
    if len(rows) + len(shape_errors) > MAX_ROWS:
        return [], [], RowError(None, f"The file has more than {MAX_ROWS} device rows; split it.")
    return rows, shape_errors, None


def _value_problems(values: dict[str, str]) -> list[str]:
    problems = []
    for column in DEVICE_COLUMNS:
        model_field = Device._meta.get_field(column)
        value = values[column]
        if not value:
            problems.append(f"{column} is empty")
        elif len(value) > model_field.max_length:
            problems.append(f"{column} is longer than {model_field.max_length} characters")
        else:
            problems.extend(f"{column} {value!r}: {message}" for message in _validator_messages(model_field, value))
    for column in ("merchant", "store"):
        value = values[column]
        if not value:
            problems.append(f"{column} is empty")
        elif len(value) > NAME_MAX_LENGTH:
            problems.append(f"{column} is longer than {NAME_MAX_LENGTH} characters")
        elif not value.isprintable():
            problems.append(f"{column} contains control characters")
    if values.get("certificate"):
        try:
            certificates.certificate_parse(values["certificate"])
        except Invalid as error:
            problems.append(f"certificate: {' '.join(error.errors['pem'])}")
    return problems


def _validator_messages(model_field, value: str) -> list[str]:
    try:
        model_field.run_validators(value)
    except ValidationError as error:
        return list(error.messages)
    return []


# --- checking against the database ---------------------------------------------------------


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _resolve_places(rows: list[_Row], *, tenant: Tenant, actor: Principal) -> None:
    """Find each row's merchant and store by name, within the tenant and the actor's reach."""
    checkable = [row for row in rows if not row.problems]
    merchant_names = sorted({row.values["merchant"] for row in checkable})
    merchants_by_name: dict[str, list[Merchant]] = defaultdict(list)
    for chunk in _chunks(merchant_names):
        scoped = merchants_in_scope(principal=actor).filter(merchant_aggregator__tenant=tenant, name__in=chunk)
        for merchant in scoped:
            merchants_by_name[merchant.name].append(merchant)
    store_names = sorted({row.values["store"] for row in checkable})
    stores_by_name: dict[str, list[Store]] = defaultdict(list)
    for chunk in _chunks(store_names):
        scoped = stores_in_scope(principal=actor).filter(merchant__merchant_aggregator__tenant=tenant, name__in=chunk)
        for store in scoped:
            stores_by_name[store.name].append(store)
    for row in checkable:
        _resolve_row(row, merchants_by_name, stores_by_name)


def _resolve_row(
    row: _Row, merchants_by_name: dict[str, list[Merchant]], stores_by_name: dict[str, list[Store]]
) -> None:
    merchant_name, store_name = row.values["merchant"], row.values["store"]
    merchants = merchants_by_name.get(merchant_name, [])
    if not merchants:
        row.problems.append(f"unknown merchant {merchant_name!r} in this tenant")
        return
    if len(merchants) > 1:
        row.problems.append(f"{len(merchants)} merchants are named {merchant_name!r} in this tenant; rename them apart")
        return
    row.merchant = merchants[0]
    candidates = stores_by_name.get(store_name, [])
    own = [store for store in candidates if store.merchant_id == row.merchant.pk]
    if len(own) == 1:
        row.store = own[0]
    elif len(own) > 1:
        row.problems.append(f"merchant {merchant_name!r} has {len(own)} stores named {store_name!r}; rename them apart")
    elif candidates:
        row.problems.append(f"store {store_name!r} is not a store of merchant {merchant_name!r}")
    else:
        row.problems.append(f"unknown store {store_name!r} in this tenant")


def _serial_key(values: dict[str, str]) -> tuple[str, str]:
    # Serials are unique per make within a tenant, whatever their case (the model's constraint).
    return values["make"].lower(), values["serial"].lower()


def _check_serials(rows: list[_Row], *, tenant: Tenant) -> None:
    first_line: dict[tuple[str, str], int] = {}
    for row in rows:
        if any(not row.values[column] for column in DEVICE_COLUMNS):
            continue
        key = _serial_key(row.values)
        if key in first_line:
            row.problems.append(f"duplicate of line {first_line[key]} (same make and serial)")
        else:
            first_line[key] = row.line
    existing = _existing_serials(tenant=tenant, serials=sorted({serial for _, serial in first_line}))
    for row in rows:
        if row.values["make"] and row.values["serial"] and _serial_key(row.values) in existing:
            # The answers of the REST API and the admin form: nothing about the device that
            # holds the serial, wherever it lies.
            row.problems.append(f"{row.values['make']} serial {row.values['serial']!r}: {serial_refusals.REFUSED}")


def _check_certificates(rows: list[_Row]) -> None:
    """A certificate is one device's identity: not twice in the file, not one enrolled already
    (for any device: the answer names none, as the API's does)."""
    first_line: dict[str, int] = {}
    for row in rows:
        if row.problems or not row.values.get("certificate"):
            continue
        row.fingerprint = certificates.certificate_parse(row.values["certificate"]).fingerprint_sha256
        if row.fingerprint in first_line:
            row.problems.append(f"certificate: the same as on line {first_line[row.fingerprint]}")
        else:
            first_line[row.fingerprint] = row.line
    taken: set[str] = set()
    for chunk in _chunks(sorted(first_line)):
        taken.update(
            DeviceCertificate.objects.filter(fingerprint_sha256__in=chunk).values_list("fingerprint_sha256", flat=True)
        )
    for row in rows:
        if row.fingerprint in taken:
            row.problems.append("certificate: This certificate cannot be used.")


def _serial_refusals_record(rows: list[_Row], *, tenant: Tenant, actor: Principal) -> None:
    """A file with taken serials counts once against the importer (connector.serial_refusals):
    one spreadsheet mistake must not lock an operator out, a series of probing files does.
    Each refused row is audited."""
    refused = [row for row in rows if any(serial_refusals.REFUSED in problem for problem in row.problems)]
    if not refused:
        return
    serial_refusals.refusal_count(actor=actor)
    for row in refused:
        attempt = serial_refusals.Attempt(
            actor=actor,
            tenant_id=tenant.pk,
            make=row.values["make"],
            serial=row.values["serial"],
            outcome="refused",
            object_repr=f"{row.values['make']}-{row.values['model']}-{row.values['serial']}",
        )
        serial_refusals.refusal_audit(attempt)


def _existing_serials(*, tenant: Tenant, serials: list[str]) -> set[tuple[str, str]]:
    # The whole tenant, not only the actor's reach: uniqueness is the tenant's.
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(serials):
        found.update(
            Device.objects.filter(tenant=tenant)
            .annotate(make_lower=Lower("make"), serial_lower=Lower("serial"))
            .filter(serial_lower__in=chunk)
            .values_list("make_lower", "serial_lower")
        )
    return found


# --- writing -------------------------------------------------------------------------------


def _create(rows: list[_Row], *, tenant: Tenant, actor: Principal) -> ImportResult:
    try:
        with transaction.atomic():
            devices = [_create_row(row, actor=actor) for row in rows]
            audit_record(
                actor=actor,
                action="device.import_csv",
                obj=tenant,
                tenant_id=tenant.pk,
                data={"devices_created": len(devices)},
            )
    except _RowFailed as failed:
        # A concurrent change (a device created meanwhile, a store deleted) since the checks.
        # The rollback took a refused serial's audit entry with it: record it again.
        attempt = getattr(failed.__cause__, "attempt", None)
        if isinstance(attempt, serial_refusals.Attempt):
            serial_refusals.refusal_audit(attempt)
        return _failed([RowError(failed.line, failed.reason)])
    return ImportResult(created=len(devices), device_ids=tuple(device.pk for device in devices))


def _create_row(row: _Row, *, actor: Principal) -> Device:
    try:
        device = device_create(
            merchant=row.merchant,
            store=row.store,
            make=row.values["make"],
            model=row.values["model"],
            serial=row.values["serial"],
            actor=actor,
        )
        if row.values.get("certificate"):
            certificates.device_certificate_enrol(device=device, pem=row.values["certificate"], actor=actor)
    except Invalid as error:
        raise _RowFailed(row.line, error.message) from error
    return device
