"""Tollgate's Stripe emulator: stock localstripe 1.15.10 plus what Tollgate's billing flows need.

localstripe gives us an aiohttp application, an in-memory object store, `StripeObject` as the
base of every resource, Stripe's form decoding (`items[0][price]=...`), the authentication rules
and the `POST /_config/webhooks/{id}` endpoint registry.  Its billing model predates the Stripe
API version Tollgate uses (2026-09-30.endive, the one async-stripe 1.0.0-rc.10 is generated
for): it has Plans instead of Prices, subscription periods on the subscription instead of on its
items, no trials that end, no schedules, no billing portal, whole-invoice credits instead of
time-proportional prorations, and webhooks whose events lack fields that async-stripe requires.

This module keeps localstripe's machinery and replaces the billing resources with ones shaped
like the 2026-09-30 API reference.  `make_app()` builds the aiohttp application:

* our routes are added first, then localstripe's stock routes except those under the resource
  paths we own (`OWNED_PREFIXES`), so `/v1/customers/search` is not swallowed by
  `/v1/customers/{id}` and no stock handler ever sees one of our objects;
* middlewares give every response Stripe's error envelope and a `Request-Id`, check the API key,
  and implement idempotency keys;
* events are delivered, in order, by one background task that signs them the way Stripe does.

Every resource class exports its fields explicitly (`_fields()`), so the JSON is exactly the
documented object: every key that async-stripe's structs require is present, the others are
present as null.  tests/stripe/selftest.py checks this against the Rust sources; README.md lists
every difference from stock localstripe and from Stripe.
"""

import asyncio
import contextvars
import hashlib
import hmac
import html
import itertools
import json
import logging
import os
import pickle
import random
import re
import string
import sys
import time
import traceback
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

from aiohttp import ClientSession, ClientTimeout, web
from dateutil.relativedelta import relativedelta

import localstripe.resources as ls_resources
import localstripe.server as ls_server
import localstripe.webhooks as ls_webhooks
from localstripe.errors import UserError

log = logging.getLogger('tollgate_stripe')

API_VERSION = '2026-09-30.endive'

# Resource paths served by this module.  Stock localstripe routes under them are not mounted:
# they would operate on localstripe's own classes, whose shapes async-stripe cannot read.
OWNED_PREFIXES = (
    '/v1/billing_portal', '/v1/customers', '/v1/events', '/v1/invoiceitems', '/v1/invoices',
    '/v1/payment_methods', '/v1/prices', '/v1/products', '/v1/setup_intents',
    '/v1/billing/meters', '/v1/billing/meter_events', '/v1/subscription_items', '/v1/subscription_schedules', '/v1/subscriptions',
)


# ---------------------------------------------------------------------------------------------
# localstripe patches
# ---------------------------------------------------------------------------------------------

# localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after every write
# (Store.__setitem__, Store.__delitem__ and a middleware).  We keep state in memory and save it
# only to the --state-file given to run.py, so both disk methods become no-ops.
ls_resources.Store.dump_to_disk = lambda self: None
ls_resources.Store.try_load_from_disk = lambda self: None

store = ls_resources.store


def _schedule_stock_webhook(event):
    """Stock localstripe resources (charges, payment intents...) announce their events through
    `schedule_webhook(Event(...))`.  Their Event objects lack fields async-stripe requires, so they
    are converted into ours and go through our ordered, signed delivery."""
    Event.from_stock(event)


ls_resources.schedule_webhook = _schedule_stock_webhook


# ---------------------------------------------------------------------------------------------
# Small helpers: time, ids, money
# ---------------------------------------------------------------------------------------------

# Base URL of this server (http://127.0.0.1:<port>), set by run.py once the socket is bound.
# Hosted invoice pages and portal sessions are served under it.
BASE_URL = 'http://127.0.0.1'


def wall():
    """Wall-clock time in whole seconds, the resolution of every Stripe timestamp."""
    return int(time.time())


def new_id(prefix, n=24):
    return prefix + ''.join(random.choice(string.ascii_letters + string.digits) for _ in range(n))


# A global creation counter breaks ties between objects created within the same second, so lists
# are strictly newest first.  It is saved with the state.
_seq = itertools.count(1)


def next_seq():
    return next(_seq)


def add_interval(ts, interval, count):
    """ts + count intervals, in UTC.  Months and years clamp to the end of shorter months
    (31 Jan + 1 month = 28/29 Feb) as Stripe's billing cycles do."""
    d = datetime.fromtimestamp(ts, timezone.utc)
    if interval == 'day':
        d += relativedelta(days=count)
    elif interval == 'week':
        d += relativedelta(weeks=count)
    elif interval == 'month':
        d += relativedelta(months=count)
    elif interval == 'year':
        d += relativedelta(years=count)
    else:
        raise ValueError(interval)
    return int(d.timestamp())


def next_boundary(anchor, interval, count, after):
    """The first billing-cycle boundary strictly after `after`.  Boundaries are computed from the
    billing cycle anchor (anchor + k intervals), never by adding to the previous boundary, so a
    cycle anchored on the 31st comes back to the 31st after February."""
    k = 1
    while True:
        b = add_interval(anchor, interval, count * k)
        if b > after:
            return b
        k += 1


def round_half_up(fr):
    """Nearest integer of a non-negative Fraction, halves rounded up."""
    return int((fr * 2 + 1) // 2)


ZERO_DECIMAL = {'bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx',
                'vnd', 'vuv', 'xaf', 'xof', 'xpf'}
SYMBOLS = {'usd': '$', 'eur': '€', 'gbp': '£', 'cad': 'CA$', 'aud': 'A$', 'jpy': '¥'}


def money(amount, currency):
    if currency in ZERO_DECIMAL:
        num = f'{amount:,}'
    else:
        num = f'{amount / 100:,.2f}'
    sym = SYMBOLS.get(currency)
    return f'{sym}{num}' if sym else f'{num} {currency.upper()}'


def fmt_date(ts):
    """Stripe's date format in proration descriptions: "07 Mar 2026"."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime('%d %b %Y')


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class StripeError(Exception):
    """An error answered with Stripe's envelope:
    {"error": {"type", "code", "message", "param", "doc_url", "decline_code", ...}}."""

    def __init__(self, status, type, message, code=None, param=None, **extra):
        super().__init__(message)
        self.status = status
        self.body = {'type': type, 'message': message}
        if code:
            self.body['code'] = code
            self.body['doc_url'] = 'https://stripe.com/docs/error-codes/' + code.replace('_', '-')
        if param:
            self.body['param'] = param
        self.body.update({k: v for k, v in extra.items() if v is not None})

    def response(self):
        headers = {}
        if self.status in (400, 401, 402, 404):
            headers['Stripe-Should-Retry'] = 'false'
        return json_response({'error': self.body}, status=self.status, headers=headers)


def invalid(message, param=None, code=None, status=400):
    return StripeError(status, 'invalid_request_error', message, code=code, param=param)


def missing_param(name):
    return invalid(f'Missing required param: {name}.', param=name, code='parameter_missing')


def no_such(kind, id, param='id', status=404):
    """Stripe answers 404 for a missing object named in the URL and 400 for one named in a
    parameter; both carry code resource_missing and the parameter's name."""
    return invalid(f"No such {kind}: '{id}'", param=param, code='resource_missing', status=status)


def unsupported(what, param=None):
    """Something Stripe supports but this emulator does not: a loud 400 instead of a silent
    divergence."""
    return invalid(f'The Stripe emulator does not support {what}.', param=param)


def json_response(body, status=200, headers=None):
    return web.Response(text=json.dumps(body, indent=2) + '\n', status=status,
                        content_type='application/json', headers=headers)


# ---------------------------------------------------------------------------------------------
# Request parameters
# ---------------------------------------------------------------------------------------------

class Params:
    """The decoded form (or query) parameters of one request, or a nested part of them.

    Each accessor validates like Stripe (missing, invalid integer/boolean, not one of the allowed
    values) and records the parameter as known; `finish()` then rejects anything left over with
    Stripe's `parameter_unknown` error, so a request this emulator would silently misread fails
    loudly instead."""

    def __init__(self, data, prefix=''):
        self._data = data if isinstance(data, dict) else {}
        self._prefix = prefix
        self._used = set()
        self._children = []

    def name(self, key):
        return f'{self._prefix}[{key}]' if self._prefix else key

    def __contains__(self, key):
        return key in self._data

    def raw(self, key):
        self._used.add(key)
        return self._data.get(key)

    def ignore(self, *keys):
        """Parameters accepted for compatibility and without effect here (README lists them)."""
        self._used.update(keys)

    def str(self, key, required=False, choices=None, default=None):
        v = self.raw(key)
        if v is None:
            if required:
                raise missing_param(self.name(key))
            return default
        if not isinstance(v, str):
            raise invalid(f'Invalid string: {self.name(key)}', param=self.name(key))
        if choices is not None and v not in choices:
            raise invalid(f'Invalid {self.name(key)}: must be one of ' + ', '.join(choices),
                          param=self.name(key))
        return v

    def int(self, key, required=False, default=None, minimum=None, maximum=None):
        v = self.str(key, required=required)
        if v is None:
            return default
        if not re.fullmatch(r'-?\d+', v):
            raise invalid(f'Invalid integer: {v}', param=self.name(key),
                          code='parameter_invalid_integer')
        n = int(v)
        if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
            raise invalid(f'Invalid {self.name(key)}: out of range', param=self.name(key))
        return n

    def bool(self, key, default=None):
        v = self.str(key)
        if v is None:
            return default
        if v not in ('true', 'false'):
            raise invalid(f'Invalid boolean: {v}', param=self.name(key))
        return v == 'true'

    def ts(self, key, allow_now=False, required=False):
        """A Unix timestamp, or the literal `now` where Stripe accepts it."""
        v = self.str(key, required=required)
        if v is None:
            return None
        if v == 'now' and allow_now:
            return 'now'
        if not re.fullmatch(r'\d+', v):
            raise invalid(f'Invalid timestamp: must be an integer Unix timestamp'
                          + (" or 'now'" if allow_now else ''), param=self.name(key))
        return int(v)

    def strs(self, key):
        v = self.raw(key)
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise invalid(f'Invalid array: {self.name(key)}', param=self.name(key))
        return v

    def sub(self, key):
        v = self.raw(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise invalid(f'Invalid object: {self.name(key)}', param=self.name(key))
        child = Params(v, self.name(key))
        self._children.append(child)
        return child

    def subs(self, key):
        v = self.raw(key)
        if v is None:
            return None
        if isinstance(v, dict):  # items[0] only, or non-contiguous indexes
            v = [v[k] for k in sorted(v, key=lambda k: int(k) if k.isdigit() else 0)]
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise invalid(f'Invalid array: {self.name(key)}', param=self.name(key))
        children = [Params(x, f'{self.name(key)}[{i}]') for i, x in enumerate(v)]
        self._children.extend(children)
        return children

    def metadata(self, key='metadata'):
        """Stripe metadata: string values; an empty string deletes the key on update."""
        v = self.raw(key)
        if v is None:
            return None
        if v == '':
            return {}
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise invalid('Invalid metadata: values must be strings', param=self.name(key))
        for k, x in v.items():
            if len(k) > 40 or len(x) > 500:
                raise invalid('Metadata keys are limited to 40 characters and values to 500',
                              param=f'{self.name(key)}[{k}]')
        return dict(v)

    def finish(self):
        for k in self._data:
            if k not in self._used:
                raise invalid(f'Received unknown parameter: {self.name(k)}',
                              param=self.name(k), code='parameter_unknown')
        for c in self._children:
            c.finish()


def merge_metadata(current, update):
    """Stripe's metadata update: keys are added or replaced, a key set to '' is removed, and
    `metadata=` (empty) clears everything."""
    if update is None:
        return current
    if update == {}:
        return {}
    merged = dict(current)
    for k, v in update.items():
        if v == '':
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


# ---------------------------------------------------------------------------------------------
# Resources: base class, lookup, expansion, lists
# ---------------------------------------------------------------------------------------------

# id prefix -> store object name, longest prefix first (sub_sched_ before sub_).
PREFIXES = {}


def register(cls):
    PREFIXES[cls._id_prefix] = cls.object
    return cls


def lookup(id):
    """The stored object an id designates, whatever its type, or None."""
    if not isinstance(id, str):
        return None
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if id.startswith(prefix):
            return store.get(f'{PREFIXES[prefix]}:{id}')
    return None


def objects(object_name):
    return [v for k, v in store.items() if k.startswith(object_name + ':')]


class Resource(ls_resources.StripeObject):
    """Base of our resources: localstripe's StripeObject (so stock code that looks objects up in
    the store keeps working) with an explicit, complete export.

    `StripeObject.__init__` is not called: we pick ids and creation times ourselves (renewal
    invoices are created at the subscription's simulated time), and preview invoices must not be
    stored."""

    object = None
    _id_prefix = None

    def __init__(self, id=None, created=None, stored=True):
        self.id = id or new_id(self._id_prefix)
        self.created = wall() if created is None else created
        self.livemode = False
        self._seq = next_seq()
        if stored:
            key = f'{self.object}:{self.id}'
            if key in store:
                raise invalid(f'A resource with the ID {self.id} already exists.',
                              param='id', code='resource_already_exists')
            store[key] = self

    @classmethod
    def get(cls, id, param='id', status=404, kind=None):
        obj = store.get(f'{cls.object}:{id}') if isinstance(id, str) else None
        if obj is None or getattr(obj, '_deleted', False):
            raise no_such(kind or cls.object.replace('_', ' '), id, param=param, status=status)
        return obj

    # The stock localstripe routes (charges, payment intents) call these.
    @classmethod
    def _api_retrieve(cls, id):
        return cls.get(id)

    def _fields(self):
        raise NotImplementedError

    def _export(self, expand=None):
        obj = self._fields()
        for path in expand or ():
            obj = expand_path(obj, path.split('.'), path)
        return obj


def expand_path(value, parts, path):
    """Replace the id at `path` by the object it designates, as Stripe's expand[] does; lists are
    traversed element by element (`data.customer`, `items.data.price.product`)."""
    if isinstance(value, list):
        return [expand_path(v, parts, path) for v in value]
    if not parts or not isinstance(value, dict):
        return value
    key, rest = parts[0], parts[1:]
    if key not in value:
        raise invalid(f'This property cannot be expanded ({path}).', param='expand')
    v = value[key]
    if isinstance(v, str):
        target = lookup(v)
        if target is not None:
            v = target._export()
    if rest:
        v = expand_path(v, rest, path)
    value[key] = v
    return value


def newest_first(items):
    return sorted(items, key=lambda o: (o.created, o._seq), reverse=True)


def list_object(url, data, has_more=False):
    return {'object': 'list', 'data': data, 'has_more': has_more, 'url': url}


def paginate(p, items, url, kind):
    """Stripe list pagination over objects already sorted newest first: limit (1..100, default
    10), starting_after and ending_before (ids of objects in the list)."""
    limit = p.int('limit', default=10)
    if not 1 <= limit <= 100:
        raise invalid('Invalid limit: must be between 1 and 100', param='limit')
    after = p.str('starting_after')
    before = p.str('ending_before')
    ids = [o.id for o in items]
    if after is not None:
        if after not in ids:
            raise no_such(kind, after, param='starting_after', status=400)
        rest = items[ids.index(after) + 1:]
        return rest[:limit], len(rest) > limit
    if before is not None:
        if before not in ids:
            raise no_such(kind, before, param='ending_before', status=400)
        head = items[:ids.index(before)]
        return head[-limit:], len(head) > limit
    return items[:limit], len(items) > limit


def export_list(p, items, url, kind):
    page, more = paginate(p, items, url, kind)
    return list_object(url, [o._export() for o in page], more)


# ---------------------------------------------------------------------------------------------
# Events and webhook delivery
# ---------------------------------------------------------------------------------------------

class RequestContext:
    """The API request being served: its Request-Id and Idempotency-Key end up in the
    `request` field of the events it causes.  Test endpoints (a renewal) run without one, and
    their events carry {"id": null, "idempotency_key": null} like Stripe's automatic events."""

    def __init__(self, id, idempotency_key=None, api_key=None):
        self.id = id
        self.idempotency_key = idempotency_key
        self.api_key = api_key


REQUEST = contextvars.ContextVar('tollgate_stripe_request', default=None)

# Endpoint id -> ids of the events waiting for it, oldest first (saved with the state).
OUTBOX = {}
# Recent delivery attempts, for GET /_test/webhook_deliveries.
DELIVERIES = []
# Delivery attempts per event and endpoint before giving up, and the pause after the n-th
# failure: 0.5 s, 1 s, 2 s, 4 s, then 8 s (about 40 s in all).  Stripe keeps trying for three days.
MAX_ATTEMPTS = 9
_workers = {}  # endpoint id -> (asyncio.Event, asyncio.Task), while the app runs
_running = False


@register
class Event(Resource):
    """A Stripe event: {id, object, api_version, created, data {object, previous_attributes?},
    livemode, pending_webhooks, request {id, idempotency_key}, type}.  `data.object` is a snapshot
    of the object taken when the event happened."""

    object = 'event'
    _id_prefix = 'evt_'

    def __init__(self, type, snapshot, previous_attributes=None):
        super().__init__()
        self.type = type
        self.data = {'object': snapshot}
        if previous_attributes is not None:
            self.data['previous_attributes'] = previous_attributes
        ctx = REQUEST.get()
        self.request = {'id': ctx.id if ctx else None,
                        'idempotency_key': ctx.idempotency_key if ctx else None}
        # Endpoints registered now and subscribed to this type; removed once delivered.
        self._pending = [wid for wid, wh in ls_webhooks._webhooks.items()
                         if wh.events is None or type in wh.events or '*' in wh.events]
        self._failed = []  # endpoints that never accepted it
        for wid in self._pending:
            OUTBOX.setdefault(wid, []).append(self.id)
            _wake(wid)

    @classmethod
    def from_stock(cls, stock_event):
        store.pop(f'event:{stock_event.id}', None)
        return cls(stock_event.type, stock_event.data['object'])

    def _fields(self):
        return {
            'id': self.id,
            'object': 'event',
            'api_version': API_VERSION,
            'created': self.created,
            'data': json.loads(json.dumps(self.data)),
            'livemode': False,
            'pending_webhooks': len(self._pending) + len(self._failed),
            'request': dict(self.request),
            'type': self.type,
        }


def previous_attributes(before, after):
    """The values in `before` that differ in `after`, nested objects reduced to the keys that
    changed (arrays whole), as in Stripe's previous_attributes:
    {"invoice_settings": {"default_payment_method": null}}, {"items": {"data": [...]}}."""
    prev = {}
    for k, v in before.items():
        w = after.get(k)
        if v == w:
            continue
        prev[k] = previous_attributes(v, w) if isinstance(v, dict) and isinstance(w, dict) else v
    return prev


def emit(type, obj, before=None):
    """Record an event about `obj` (and queue its delivery).  With `before` (an export taken
    before a change) the event gets `previous_attributes`, and is skipped when nothing changed,
    as Stripe does for *.updated events."""
    after = obj._export()
    prev = None
    if before is not None:
        prev = previous_attributes(before, after)
        if not prev:
            return None
    return Event(type, after, prev)


def _sign(secret, t, payload):
    return hmac.new(secret.encode(), b'%d.' % t + payload, hashlib.sha256).hexdigest()


async def _post_event(session, event, wid, attempt):
    """POST one event to one endpoint, signed as Stripe does: Stripe-Signature: t=<unix>,v1=<hex
    HMAC-SHA256 of "<t>." + raw body, keyed with the endpoint secret>.  True if accepted (2xx)."""
    wh = ls_webhooks._webhooks[wid]
    payload = json.dumps(event._export(), indent=2).encode()
    t = wall()
    headers = {'Content-Type': 'application/json; charset=utf-8',
               'User-Agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
               'Stripe-Signature': f't={t},v1={_sign(wh.secret, t, payload)}'}
    try:
        async with session.post(wh.url, data=payload, headers=headers) as r:
            status = r.status
            await r.read()
    except Exception as e:  # connection refused, timeout...
        status = f'error: {type(e).__name__}'
    DELIVERIES.append({'event': event.id, 'type': event.type, 'endpoint': wid, 'url': wh.url,
                       'attempt': attempt, 'status': status, 'at': wall()})
    del DELIVERIES[:-2000]
    ok = isinstance(status, int) and 200 <= status < 300
    if not ok:
        log.info('webhook %s to %s failed (attempt %d): %s', event.type, wh.url, attempt, status)
    return ok


async def _endpoint_worker(wid, signal):
    """Deliver the events queued for one endpoint, one at a time and in creation order (so a
    receiver sees customer.subscription.created before its updates).  A failing event is retried
    with backoff and holds back the later ones, which keeps the order; after MAX_ATTEMPTS it is
    given up (it then counts in pending_webhooks forever)."""
    attempts = 0
    async with ClientSession(timeout=ClientTimeout(total=10)) as session:
        while True:
            queue = OUTBOX.get(wid)
            if not queue or HELD['on']:  # HELD: see "Webhooks held, released out of order"
                signal.clear()
                await signal.wait()
                continue
            entry = queue[0]
            eid, _, copy = entry.partition('#')  # `evt_…#n`: a duplicate delivery (release copies)
            event = store.get(f'event:{eid}')
            if event is None or wid not in ls_webhooks._webhooks or \
                    (not copy and wid not in event._pending):
                queue.pop(0)
                continue
            attempts += 1
            delivered = await _post_event(session, event, wid, attempts)
            if delivered or attempts >= MAX_ATTEMPTS:
                # A release may have reordered the queue meanwhile: take out this entry, wherever it is.
                if entry in queue:
                    queue.remove(entry)
            if delivered:
                if not copy:
                    event._pending.remove(wid)
                attempts = 0
            elif attempts >= MAX_ATTEMPTS:
                if not copy:
                    event._pending.remove(wid)
                    event._failed.append(wid)
                attempts = 0
            else:
                await asyncio.sleep(min(0.5 * 2 ** (attempts - 1), 8))


def _wake(wid):
    if not _running:
        return  # the workers start with the app and look at OUTBOX then
    if wid not in _workers:
        signal = asyncio.Event()
        _workers[wid] = (signal, asyncio.ensure_future(_endpoint_worker(wid, signal)))
    _workers[wid][0].set()


async def _start_delivery(app):
    global _running
    _running = True
    for wid in list(OUTBOX):
        _wake(wid)


async def _stop_delivery(app):
    global _running
    _running = False
    for signal, task in _workers.values():
        task.cancel()
    for signal, task in list(_workers.values()):
        try:
            await task
        except BaseException:
            pass
    _workers.clear()


def undelivered():
    return sorted({eid.partition('#')[0] for q in OUTBOX.values() for eid in q})


# ---------------------------------------------------------------------------------------------
# Products and prices (stock localstripe only has Plans)
# ---------------------------------------------------------------------------------------------

@register
class Product(Resource):
    object = 'product'
    _id_prefix = 'prod_'

    def __init__(self, name, id=None, active=True, description=None, metadata=None,
                 images=None, statement_descriptor=None, unit_label=None, url=None,
                 shippable=None, tax_code=None):
        super().__init__(id=id)
        self.name = name
        self.active = active
        self.description = description
        self.metadata = metadata or {}
        self.images = images or []
        self.statement_descriptor = statement_descriptor
        self.unit_label = unit_label
        self.url = url
        self.shippable = shippable
        self.tax_code = tax_code
        self.default_price = None
        self.updated = self.created

    def _fields(self):
        return {
            'id': self.id, 'object': 'product', 'active': self.active,
            'created': self.created, 'default_price': self.default_price,
            'description': self.description, 'images': list(self.images), 'livemode': False,
            'marketing_features': [], 'metadata': dict(self.metadata), 'name': self.name,
            'package_dimensions': None, 'shippable': self.shippable,
            'statement_descriptor': self.statement_descriptor, 'tax_code': self.tax_code,
            'type': 'service', 'unit_label': self.unit_label, 'updated': self.updated,
            'url': self.url,
        }


@register
class Price(Resource):
    """A Price (https://docs.stripe.com/api/prices/object).  Subscription items also show it as a
    legacy `plan` object (same id), which async-stripe's SubscriptionItem requires."""

    object = 'price'
    _id_prefix = 'price_'

    def __init__(self, currency, unit_amount, product, recurring=None, lookup_key=None,
                 nickname=None, metadata=None, active=True, tax_behavior='unspecified',
                 unit_amount_decimal=None):
        super().__init__()
        self.currency = currency
        self.unit_amount = unit_amount
        # A fractional amount (metered prices only); `unit_amount` is then null, as in Stripe.
        self.unit_amount_decimal = unit_amount_decimal
        self.product = product
        self.recurring = recurring
        self.lookup_key = lookup_key
        self.nickname = nickname
        self.metadata = metadata or {}
        self.active = active
        self.tax_behavior = tax_behavior

    @property
    def interval(self):
        return self.recurring['interval'] if self.recurring else None

    @property
    def interval_count(self):
        return self.recurring['interval_count'] if self.recurring else None

    def _product_name(self):
        prod = store.get(f'product:{self.product}')
        return prod.name if prod else self.product

    def _fields(self):
        return {
            'id': self.id, 'object': 'price', 'active': self.active,
            'billing_scheme': 'per_unit', 'created': self.created, 'currency': self.currency,
            'custom_unit_amount': None, 'livemode': False, 'lookup_key': self.lookup_key,
            'metadata': dict(self.metadata), 'nickname': self.nickname, 'product': self.product,
            'recurring': dict(self.recurring) if self.recurring else None,
            'tax_behavior': self.tax_behavior, 'tiers_mode': None, 'transform_quantity': None,
            'type': 'recurring' if self.recurring else 'one_time',
            'unit_amount': self.unit_amount,
            'unit_amount_decimal': (getattr(self, 'unit_amount_decimal', None)
                                    or str(self.unit_amount)),
        }

    def _plan(self):
        """The price seen as a legacy Plan, as Stripe still shows it on subscription items."""
        r = self.recurring or {}
        return {
            'id': self.id, 'object': 'plan', 'active': self.active,
            'amount': self.unit_amount, 'amount_decimal': str(self.unit_amount),
            'billing_scheme': 'per_unit', 'created': self.created, 'currency': self.currency,
            'interval': r.get('interval'), 'interval_count': r.get('interval_count'),
            'livemode': False, 'metadata': dict(self.metadata), 'meter': r.get('meter'),
            'nickname': self.nickname, 'product': self.product, 'tiers_mode': None,
            'transform_usage': None, 'trial_period_days': None,
            'usage_type': r.get('usage_type', 'licensed'),
        }


# ---------------------------------------------------------------------------------------------
# Customers
# ---------------------------------------------------------------------------------------------

ADDRESS_KEYS = ('city', 'country', 'line1', 'line2', 'postal_code', 'state')


def parse_address(p, key):
    a = p.sub(key)
    if a is None:
        return None
    return {k: a.str(k) for k in ADDRESS_KEYS}


@register
class Customer(Resource):
    object = 'customer'
    _id_prefix = 'cus_'

    def __init__(self, email=None, name=None, description=None, phone=None, address=None,
                 metadata=None, preferred_locales=None, tax_exempt='none', balance=0):
        super().__init__(id=new_id('cus_', 14))
        self.email = email
        self.name = name
        self.description = description
        self.phone = phone
        self.address = address
        self.metadata = metadata or {}
        self.preferred_locales = preferred_locales or []
        self.tax_exempt = tax_exempt
        self.balance = balance
        self.currency = None  # set by the first subscription, as Stripe does
        self.default_payment_method = None  # invoice_settings.default_payment_method
        self.invoice_prefix = ''.join(random.choice(string.ascii_uppercase) for _ in range(8))
        self.next_invoice_sequence = 1
        self._deleted = False

    @property
    def delinquent(self):
        """Stripe flags a customer whose latest automatic payment failed and is still due."""
        return any(i.customer == self.id and i.status == 'open' and i.attempted
                   for i in objects('invoice'))

    def _get_default_payment_method_or_source(self):  # used by stock localstripe charges
        return store.get(f'payment_method:{self.default_payment_method}')

    def _fields(self):
        return {
            'id': self.id, 'object': 'customer',
            'address': dict(self.address) if self.address else None,
            'balance': self.balance, 'business_name': None, 'created': self.created,
            'currency': self.currency, 'customer_account': None, 'default_source': None,
            'delinquent': self.delinquent, 'description': self.description,
            'discount': None, 'email': self.email, 'individual_name': None,
            'invoice_credit_balance': {}, 'invoice_prefix': self.invoice_prefix,
            'invoice_settings': {
                'custom_fields': None, 'default_payment_method': self.default_payment_method,
                'footer': None, 'rendering_options': None,
            },
            'livemode': False, 'metadata': dict(self.metadata), 'name': self.name,
            'next_invoice_sequence': self.next_invoice_sequence, 'phone': self.phone,
            'preferred_locales': list(self.preferred_locales), 'shipping': None,
            'tax_exempt': self.tax_exempt, 'test_clock': None,
        }


# ---------------------------------------------------------------------------------------------
# Payment methods
# ---------------------------------------------------------------------------------------------

# Stripe's test cards (https://docs.stripe.com/testing) and the error each one produces.
# Cards in ATTACH_DECLINES fail when attached to a customer (Stripe validates a card then) and
# when charged; 4000000000000341 attaches and then fails every charge; the 3D Secure cards fail
# off-session charges with authentication_required.
ATTACH_DECLINES = {
    '4000000000000002': ('card_declined', 'generic_decline', 'Your card was declined.'),
    '4000000000009995': ('card_declined', 'insufficient_funds',
                         'Your card has insufficient funds.'),
    '4000000000009987': ('card_declined', 'lost_card', 'Your card was declined.'),
    '4000000000009979': ('card_declined', 'stolen_card', 'Your card was declined.'),
    '4000000000000069': ('expired_card', 'expired_card', 'Your card has expired.'),
    '4000000000000127': ('incorrect_cvc', 'incorrect_cvc',
                         "Your card's security code is incorrect."),
    '4000000000000119': ('processing_error', 'processing_error',
                         'An error occurred while processing your card. Try again in a little bit.'),
}
CHARGE_DECLINES = dict(ATTACH_DECLINES, **{
    '4000000000000341': ('card_declined', 'generic_decline', 'Your card was declined.'),
    '4000002760003184': ('authentication_required', 'authentication_required',
                         'Your card was declined. This transaction requires authentication.'),
    '4000000000003220': ('authentication_required', 'authentication_required',
                         'Your card was declined. This transaction requires authentication.'),
})

# Stripe's test PaymentMethod ids: using one materialises a new PaymentMethod with that card.
TEST_PAYMENT_METHODS = {
    'pm_card_visa': '4242424242424242',
    'pm_card_mastercard': '5555555555554444',
    'pm_card_amex': '378282246310005',
    'pm_card_chargeDeclined': '4000000000000002',
    'pm_card_chargeDeclinedInsufficientFunds': '4000000000009995',
    'pm_card_chargeCustomerFail': '4000000000000341',
    'pm_card_authenticationRequired': '4000002760003184',
}


def card_brand(number):
    if number.startswith('4'):
        return 'visa'
    if number[:2] in ('34', '37'):
        return 'amex'
    if number[:2] in ('51', '52', '53', '54', '55') or 2221 <= int(number[:4]) <= 2720:
        return 'mastercard'
    if number.startswith('6011') or number.startswith('65'):
        return 'discover'
    return 'unknown'


def luhn_ok(number):
    total = 0
    for i, d in enumerate(reversed(number)):
        n = int(d)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def card_error(code, decline_code, message, param=None, **extra):
    return StripeError(402, 'card_error', message, code=code, param=param,
                       decline_code=decline_code, **extra)


@register
class PaymentMethod(Resource):
    object = 'payment_method'
    _id_prefix = 'pm_'

    def __init__(self, number, exp_month, exp_year, billing_details=None, metadata=None,
                 allow_redisplay='unspecified'):
        super().__init__()
        self.type = 'card'
        self._number = number
        self.exp_month = exp_month
        self.exp_year = exp_year
        self.billing_details = billing_details or {}
        self.metadata = metadata or {}
        self.allow_redisplay = allow_redisplay
        self.customer = None
        self._detached = False  # Stripe refuses to reuse a detached payment method

    @classmethod
    def from_card_params(cls, c, billing_details=None, metadata=None, allow_redisplay=None):
        """Validate card[number|exp_month|exp_year|cvc] like Stripe (402 card_error)."""
        number = re.sub(r'[\s-]', '', c.str('number', required=True))
        exp_month = c.int('exp_month', required=True)
        exp_year = c.int('exp_year', required=True)
        cvc = c.str('cvc')
        c.ignore('networks')
        if not re.fullmatch(r'\d{12,19}', number) or not luhn_ok(number):
            raise card_error('incorrect_number', None, 'Your card number is incorrect.',
                             param=c.name('number'))
        if not 1 <= exp_month <= 12:
            raise card_error('invalid_expiry_month', None,
                             "Your card's expiration month is invalid.",
                             param=c.name('exp_month'))
        if exp_year < 100:
            exp_year += 2000
        now = datetime.now(timezone.utc)
        if exp_year < now.year or (exp_year == now.year and exp_month < now.month) \
                or exp_year > now.year + 50:
            raise card_error('invalid_expiry_year', None,
                             "Your card's expiration year is invalid.",
                             param=c.name('exp_year'))
        if cvc is not None and not re.fullmatch(r'\d{3,4}', cvc):
            raise card_error('invalid_cvc', None, "Your card's security code is invalid.",
                             param=c.name('cvc'))
        return number, exp_month, exp_year

    def _decline(self, stage):
        """(code, decline_code, message) if this card fails at 'attach' or 'charge'."""
        table = ATTACH_DECLINES if stage == 'attach' else CHARGE_DECLINES
        return table.get(self._number)

    # Used by stock localstripe payment intents and charges:
    def _charging_is_declined(self):
        return self._decline('charge') is not None

    def _attaching_is_declined(self):
        return self._decline('attach') is not None

    def _requires_authentication(self):
        return False

    def _fields(self):
        bd = self.billing_details
        brand = card_brand(self._number)
        return {
            'id': self.id, 'object': 'payment_method',
            'allow_redisplay': self.allow_redisplay,
            'billing_details': {
                'address': {k: (bd.get('address') or {}).get(k) for k in ADDRESS_KEYS},
                'email': bd.get('email'), 'name': bd.get('name'), 'phone': bd.get('phone'),
                'tax_id': None,
            },
            'card': {
                'brand': brand,
                'checks': {'address_line1_check': None, 'address_postal_code_check': None,
                           'cvc_check': 'pass'},
                'country': 'US', 'display_brand': brand, 'exp_month': self.exp_month,
                'exp_year': self.exp_year,
                'fingerprint': hashlib.sha1(self._number.encode()).hexdigest()[:16],
                'funding': 'credit', 'generated_from': None, 'last4': self._number[-4:],
                'networks': {'available': [brand], 'preferred': None},
                'regulated_status': 'unregulated',
                'three_d_secure_usage': {'supported': True}, 'wallet': None,
            },
            'created': self.created, 'customer': self.customer, 'customer_account': None,
            'livemode': False, 'metadata': dict(self.metadata), 'type': 'card',
        }


def resolve_payment_method(id, param, status=400):
    """A PaymentMethod by id; Stripe's test ids (pm_card_visa...) create a fresh one."""
    if id in TEST_PAYMENT_METHODS:
        number = TEST_PAYMENT_METHODS[id]
        return PaymentMethod(number, 12, datetime.now(timezone.utc).year + 3)
    return PaymentMethod.get(id, param=param, status=status, kind='PaymentMethod')


def attach_payment_method(pm, customer):
    """Attach `pm` to `customer` with Stripe's checks; returns True if it was newly attached."""
    if pm.customer == customer.id:
        return False
    if pm.customer is not None:
        raise invalid('The payment method you provided has already been attached to a '
                      'customer.', param='payment_method')
    if pm._detached:
        raise invalid('This PaymentMethod was previously used without being attached to a '
                      'Customer or was detached from a Customer, and may not be used again.',
                      param='payment_method', code='payment_method_unexpected_state')
    decline = pm._decline('attach')
    if decline:
        raise card_error(*decline)
    pm.customer = customer.id
    emit('payment_method.attached', pm)
    return True


def customer_payment_method(customer, id, param):
    """A PaymentMethod given as a default: it must exist and belong to the customer."""
    pm = PaymentMethod.get(id, param=param, status=400, kind='PaymentMethod')
    if pm.customer != customer.id:
        raise invalid(f'The customer does not have a payment method with the ID {id}. The '
                      'payment method must be attached to the customer.', param=param,
                      code='resource_missing')
    return pm


# ---------------------------------------------------------------------------------------------
# Setup intents
# ---------------------------------------------------------------------------------------------

@register
class SetupIntent(Resource):
    object = 'setup_intent'
    _id_prefix = 'seti_'

    def __init__(self, customer=None, usage='off_session', payment_method_types=None,
                 payment_method=None, metadata=None, description=None,
                 automatic_payment_methods=None):
        super().__init__()
        self.customer = customer
        self.usage = usage
        self.payment_method_types = payment_method_types or ['card']
        self.payment_method = payment_method
        self.metadata = metadata or {}
        self.description = description
        self.automatic_payment_methods = automatic_payment_methods
        self.client_secret = f'{self.id}_secret_{new_id("", 24)}'
        self.status = 'requires_confirmation' if payment_method else 'requires_payment_method'
        self.cancellation_reason = None
        self.last_setup_error = None

    def _fields(self):
        return {
            'id': self.id, 'object': 'setup_intent', 'application': None,
            'automatic_payment_methods': self.automatic_payment_methods,
            'cancellation_reason': self.cancellation_reason,
            'client_secret': self.client_secret, 'created': self.created,
            'customer': self.customer, 'customer_account': None,
            'description': self.description, 'flow_directions': None,
            'last_setup_error': dict(self.last_setup_error) if self.last_setup_error else None,
            'latest_attempt': None, 'livemode': False, 'mandate': None,
            'metadata': dict(self.metadata), 'next_action': None, 'on_behalf_of': None,
            'payment_method': self.payment_method,
            'payment_method_configuration_details': None,
            'payment_method_options': {'card': {'mandate_options': None, 'network': None,
                                                'request_three_d_secure': 'automatic'}},
            'payment_method_types': list(self.payment_method_types),
            'single_use_mandate': None, 'status': self.status, 'usage': self.usage,
        }

    def _confirm(self, pm_id=None):
        """Confirming attaches the card to the customer; a declined card leaves the intent in
        requires_payment_method with last_setup_error, and answers 402 with the intent."""
        if self.status in ('succeeded', 'canceled'):
            raise invalid(f'You cannot confirm this SetupIntent because it has a status of '
                          f'{self.status}.', code='setup_intent_unexpected_state')
        if pm_id is None and self.payment_method is None:
            raise invalid("You cannot confirm this SetupIntent because it's missing a payment "
                          'method. Update the SetupIntent with a payment method and then '
                          'confirm it again.', code='setup_intent_unexpected_state')
        pm = resolve_payment_method(pm_id or self.payment_method, 'payment_method')
        self.payment_method = pm.id
        try:
            if self.customer:
                attach_payment_method(pm, Customer.get(self.customer))
            else:
                decline = pm._decline('attach')
                if decline:
                    raise card_error(*decline)
        except StripeError as e:
            if e.status != 402:
                raise
            self.status = 'requires_payment_method'
            self.payment_method = None
            self.last_setup_error = {k: v for k, v in e.body.items()
                                     if k in ('code', 'decline_code', 'doc_url', 'message',
                                              'type')}
            emit('setup_intent.setup_failed', self)
            e.body['setup_intent'] = self._export()
            raise
        self.status = 'succeeded'
        self.last_setup_error = None
        emit('setup_intent.succeeded', self)


# ---------------------------------------------------------------------------------------------
# Billing portal sessions
# ---------------------------------------------------------------------------------------------

PORTAL_CONFIGURATION = 'bpc_tollgate_default'


@register
class BillingPortalSession(Resource):
    object = 'billing_portal.session'
    _id_prefix = 'bps_'

    def __init__(self, customer, return_url=None, configuration=None, locale=None,
                 on_behalf_of=None):
        super().__init__()
        self.customer = customer
        self.return_url = return_url
        self.configuration = configuration or PORTAL_CONFIGURATION
        self.locale = locale
        self.on_behalf_of = on_behalf_of

    def _fields(self):
        return {
            'id': self.id, 'object': 'billing_portal.session',
            'configuration': self.configuration, 'created': self.created,
            'customer': self.customer, 'customer_account': None, 'flow': None,
            'livemode': False, 'locale': self.locale, 'on_behalf_of': self.on_behalf_of,
            'return_url': self.return_url, 'url': f'{BASE_URL}/_test/portal/{self.id}',
        }


# ---------------------------------------------------------------------------------------------
# Subscriptions and their items
# ---------------------------------------------------------------------------------------------

@register
class SubscriptionItem(Resource):
    """A subscription item.  Since API version 2025-03-31 the billing period lives here
    (current_period_start/end), not on the subscription."""

    object = 'subscription_item'
    _id_prefix = 'si_'

    def __init__(self, subscription, price, quantity, metadata, period_start, period_end,
                 created=None, id=None):
        super().__init__(id=id, created=created)
        self.subscription = subscription
        self.price = price
        self.quantity = quantity
        self.metadata = metadata or {}
        self.current_period_start = period_start
        self.current_period_end = period_end

    def _price(self):
        return store[f'price:{self.price}']

    def _fields(self):
        price = self._price()
        return {
            'id': self.id, 'object': 'subscription_item', 'billing_thresholds': None,
            'created': self.created, 'current_period_end': self.current_period_end,
            'current_period_start': self.current_period_start, 'discounts': [],
            'metadata': dict(self.metadata), 'plan': price._plan(), 'price': price._export(),
            'quantity': self.quantity, 'subscription': self.subscription, 'tax_rates': [],
        }


@register
class Subscription(Resource):
    object = 'subscription'
    _id_prefix = 'sub_'

    def __init__(self, customer, currency, created, metadata=None, description=None,
                 default_payment_method=None, billing_mode='flexible',
                 missing_payment_method='create_invoice', save_default_payment_method='off'):
        super().__init__(created=created)
        self.customer = customer
        self.currency = currency
        self.status = 'incomplete'
        self._items = []
        self.metadata = metadata or {}
        self.description = description
        self.default_payment_method = default_payment_method
        self.start_date = created
        self.billing_cycle_anchor = created
        self.trial_start = None
        self.trial_end = None
        self.cancel_at_period_end = False
        self.cancel_at = None
        self.canceled_at = None
        self.ended_at = None
        self.cancellation_details = {'comment': None, 'feedback': None, 'reason': None}
        self.latest_invoice = None
        self.schedule = None
        self.billing_mode = billing_mode
        self._missing_payment_method = missing_payment_method
        self._save_default_payment_method = save_default_payment_method
        # The subscription's own clock: the renewals done through /_test/.../advance move it
        # ahead of the wall clock, like a Stripe test clock.
        self._sim_time = created
        self._anchor = created  # billing cycle anchor used to compute period boundaries

    def _now(self):
        return max(wall(), self._sim_time)

    def _period(self):
        it = self._items[0]
        return it.current_period_start, it.current_period_end

    def _interval(self):
        p = self._items[0]._price()
        return p.interval, p.interval_count

    def _fields(self):
        return {
            'id': self.id, 'object': 'subscription', 'application': None,
            'application_fee_percent': None,
            'automatic_tax': {'disabled_reason': None, 'enabled': False, 'liability': None},
            'billing_cycle_anchor': self.billing_cycle_anchor,
            'billing_cycle_anchor_config': None,
            'billing_mode': {'flexible': ({'proration_discounts': 'included'}
                                          if self.billing_mode == 'flexible' else None),
                             'type': self.billing_mode, 'updated_at': self.created},
            'billing_schedules': [], 'billing_thresholds': None, 'cancel_at': self.cancel_at,
            'cancel_at_period_end': self.cancel_at_period_end, 'canceled_at': self.canceled_at,
            'cancellation_details': dict(self.cancellation_details),
            'collection_method': 'charge_automatically', 'created': self.created,
            'currency': self.currency, 'customer': self.customer, 'customer_account': None,
            'days_until_due': None, 'default_payment_method': self.default_payment_method,
            'default_source': None, 'default_tax_rates': [], 'description': self.description,
            'discounts': [], 'ended_at': self.ended_at,
            'invoice_settings': {'account_tax_ids': None, 'issuer': {'type': 'self'}},
            'items': {'object': 'list', 'data': [i._export() for i in self._items],
                      'has_more': False, 'total_count': len(self._items),
                      'url': f'/v1/subscription_items?subscription={self.id}'},
            'latest_invoice': self.latest_invoice, 'livemode': False,
            'metadata': dict(self.metadata), 'next_pending_invoice_item_invoice': None,
            'on_behalf_of': None, 'pause_collection': None,
            'payment_settings': {'payment_method_options': None, 'payment_method_types': None,
                                 'save_default_payment_method':
                                     self._save_default_payment_method},
            'pending_invoice_item_interval': None, 'pending_setup_intent': None,
            'pending_update': export_pending_update(self), 'schedule': self.schedule,
            'start_date': self.start_date, 'status': self.status, 'test_clock': None,
            'transfer_data': None, 'trial_end': self.trial_end,
            'trial_settings': {'end_behavior': {
                'missing_payment_method': self._missing_payment_method}},
            'trial_start': self.trial_start,
        }


# ---------------------------------------------------------------------------------------------
# Invoices, their lines, pending invoice items
# ---------------------------------------------------------------------------------------------

class InvoiceLine:
    """One invoice line (not stored on its own; listed under its invoice).

    `spec` is the dict the billing functions below produce: amount, currency, description,
    period_start, period_end, price, quantity, proration, subscription, subscription_item, and
    optionally invoice_item and credited (the line a proration credit refers to)."""

    def __init__(self, invoice_id, spec, preview):
        self.id = new_id('il_tmp_' if preview else 'il_')
        self.invoice = invoice_id
        self.spec = dict(spec)

    @property
    def amount(self):
        return self.spec['amount']

    def _export(self):
        s = self.spec
        price = store[f'price:{s["price"]}']
        credited = s.get('credited')
        return {
            'id': self.id, 'object': 'line_item', 'amount': s['amount'],
            'currency': s['currency'], 'description': s['description'],
            'discount_amounts': [], 'discountable': not s['proration'], 'discounts': [],
            'invoice': self.invoice, 'livemode': False, 'metadata': {},
            'parent': one_off_line_parent(s) if s['subscription'] is None else {
                'invoice_item_details': None,
                'subscription_item_details': {
                    'invoice_item': s.get('invoice_item'),
                    'proration': s['proration'],
                    'proration_details': {'credited_items': dict(credited) if credited
                                          else None},
                    'subscription': s['subscription'],
                    'subscription_item': s['subscription_item'],
                },
                'type': 'subscription_item_details',
            },
            'period': {'end': s['period_end'], 'start': s['period_start']},
            'pretax_credit_amounts': [],
            'pricing': {
                'price_details': {'price': price.id, 'product': price.product},
                'type': 'price_details',
                'unit_amount_decimal': s.get('unit_amount_decimal')
                or unit_decimal(s['amount'], s['quantity']),
            },
            'quantity': s['quantity'], 'subscription': s['subscription'],
            'subtotal': s['amount'], 'taxes': [],
        }


def unit_decimal(amount, quantity):
    if not quantity:
        return str(amount)
    v = Fraction(amount, quantity)
    return str(v.numerator) if v.denominator == 1 else f'{float(v):.12f}'.rstrip('0')


@register
class Invoice(Resource):
    object = 'invoice'
    _id_prefix = 'in_'

    def __init__(self, customer, subscription, billing_reason, created, period_start,
                 period_end, specs, preview=False):
        super().__init__(id=new_id('upcoming_in_') if preview else None, created=created,
                         stored=not preview)
        self._preview = preview
        self.customer = customer.id
        self.subscription = subscription.id if subscription else None
        self._sub_metadata = dict(subscription.metadata) if subscription else None
        self.currency = subscription.currency if subscription else specs[0]['currency']
        self.billing_reason = billing_reason
        self.period_start = period_start
        self.period_end = period_end
        self.lines = [InvoiceLine(self.id, s, preview) for s in specs]
        self.status = 'draft'
        self.starting_balance = None  # fixed at finalization
        self.ending_balance = None
        self._amount_due = None
        self.amount_paid = 0
        self.attempt_count = 0
        self.attempted = False
        self.auto_advance = not preview
        self.number = None
        self.next_payment_attempt = None
        self.effective_at = None
        self.status_transitions = {'finalized_at': None, 'marked_uncollectible_at': None,
                                   'paid_at': None, 'voided_at': None}
        self._customer_snapshot = None
        self._proration_date = None
        self.metadata = {}

    def _clock(self):
        sub = store.get(f'subscription:{self.subscription}') if self.subscription else None
        return sub._now() if sub else wall()

    @property
    def total(self):
        return sum(line.amount for line in self.lines)

    @property
    def amount_due(self):
        if self._amount_due is not None:
            return self._amount_due
        balance = store[f'customer:{self.customer}'].balance  # a draft shows today's balance
        return max(0, self.total + balance)

    def _refresh(self):
        """A draft's usage lines follow the usage reported until it is finalized."""
        if self.status == 'draft':
            for line in self.lines:
                refresh_metered(line.spec)

    def _fields(self):
        self._refresh()
        cust = store[f'customer:{self.customer}']
        snap = self._customer_snapshot or {'email': cust.email, 'name': cust.name,
                                           'phone': cust.phone, 'address': cust.address}
        starting_balance = (self.starting_balance if self.starting_balance is not None
                            else cust.balance)
        finalized = self.status != 'draft'
        parent = None
        if self.subscription:
            parent = {'quote_details': None,
                      'subscription_details': {
                          'metadata': dict(self._sub_metadata or {}),
                          'subscription': self.subscription,
                          'subscription_proration_date': self._proration_date},
                      'type': 'subscription_details'}
        return {
            'id': self.id, 'object': 'invoice', 'account_country': 'US',
            'account_name': 'Tollgate (Stripe emulator)', 'account_tax_ids': None,
            'amount_due': self.amount_due, 'amount_overpaid': 0,
            'amount_paid': self.amount_paid,
            'amount_remaining': self.amount_due - self.amount_paid, 'amount_shipping': 0,
            'application': None, 'attempt_count': self.attempt_count,
            'attempted': self.attempted, 'auto_advance': self.auto_advance,
            'automatic_tax': {'disabled_reason': None, 'enabled': False, 'liability': None,
                              'provider': None, 'status': None},
            'automatically_finalizes_at': (getattr(self, '_finalizes_at', None)
                                           if self.status == 'draft' else None),
            'billing_reason': self.billing_reason,
            'collection_method': 'charge_automatically',
            'confirmation_secret': invoice_confirmation_secret(self),
            'created': self.created, 'currency': self.currency, 'custom_fields': None,
            'customer': self.customer, 'customer_account': None,
            'customer_address': dict(snap['address']) if snap['address'] else None,
            'customer_email': snap['email'], 'customer_name': snap['name'],
            'customer_phone': snap['phone'], 'customer_shipping': None,
            'customer_tax_exempt': cust.tax_exempt, 'customer_tax_ids': [],
            'default_payment_method': None, 'default_source': None, 'default_tax_rates': [],
            'description': None, 'discounts': [], 'due_date': None,
            'effective_at': self.effective_at, 'ending_balance': self.ending_balance,
            'footer': None, 'from_invoice': None,
            'hosted_invoice_url': f'{BASE_URL}/_test/hosted/{self.id}' if finalized else None,
            'invoice_pdf': None, 'issuer': {'type': 'self'}, 'last_finalization_error': None,
            'latest_revision': None,
            'lines': {'object': 'list', 'data': [line._export() for line in self.lines],
                      'has_more': False, 'total_count': len(self.lines),
                      'url': f'/v1/invoices/{self.id}/lines'},
            'livemode': False, 'metadata': dict(self.metadata),
            'next_payment_attempt': self.next_payment_attempt, 'number': self.number,
            'on_behalf_of': None, 'parent': parent,
            'payment_settings': {'default_mandate': None, 'payment_method_options': None,
                                 'payment_method_types': None},
            'period_end': self.period_end, 'period_start': self.period_start,
            'post_payment_credit_notes_amount': 0, 'pre_payment_credit_notes_amount': 0,
            'receipt_number': None, 'rendering': None, 'shipping_cost': None,
            'shipping_details': None, 'starting_balance': starting_balance,
            'statement_descriptor': None, 'status': self.status,
            'status_transitions': dict(self.status_transitions),
            'subtotal': self.total, 'subtotal_excluding_tax': self.total,
            'test_clock': None, 'total': self.total, 'total_discount_amounts': [],
            'total_excluding_tax': self.total, 'total_pretax_credit_amounts': [],
            'total_taxes': [], 'webhooks_delivered_at': self.created,
        }


@register
class InvoiceItem(Resource):
    """A pending invoice item: the prorations of a subscription update made with
    proration_behavior=create_prorations wait here for the next invoice."""

    object = 'invoiceitem'
    _id_prefix = 'ii_'

    def __init__(self, customer, spec, created):
        super().__init__(created=created)
        self.customer = customer
        self.spec = dict(spec, invoice_item=self.id)
        self.invoice = None

    def _fields(self):
        s = self.spec
        price = store[f'price:{s["price"]}']
        credited = s.get('credited')
        return {
            'id': self.id, 'object': 'invoiceitem', 'amount': s['amount'],
            'currency': s['currency'], 'customer': self.customer, 'customer_account': None,
            'date': self.created, 'description': s['description'],
            'discountable': not s['proration'], 'discounts': [], 'invoice': self.invoice,
            'livemode': False, 'metadata': {}, 'net_amount': s['amount'],
            'parent': None if s['subscription'] is None else {
                'subscription_details': {'subscription': s['subscription'],
                                         'subscription_item': s['subscription_item']},
                'type': 'subscription_details'},
            'period': {'end': s['period_end'], 'start': s['period_start']},
            'pricing': {'price_details': {'price': price.id, 'product': price.product},
                        'type': 'price_details',
                        'unit_amount_decimal': unit_decimal(s['amount'], s['quantity'])},
            'proration': s['proration'],
            'proration_details': {
                'credited_items': ({'invoice_item': None, 'invoice_line_item_details': {
                    'invoice': credited['invoice'],
                    'invoice_line_items': list(credited['invoice_line_items'])},
                    'type': 'invoice_line_items'} if credited else None),
                'discount_amounts': []},
            'quantity': s['quantity'], 'quantity_decimal': str(s['quantity']),
            'tax_rates': [], 'test_clock': None,
        }


# ---------------------------------------------------------------------------------------------
# Subscription schedules
# ---------------------------------------------------------------------------------------------

@register
class SubscriptionSchedule(Resource):
    """A schedule attached to an existing subscription (from_subscription).  Each phase is
    {start_date, end_date, items [{price, quantity, metadata}], proration_behavior, metadata};
    renewals (/_test/.../advance) apply the phase that starts at the renewal and, once the
    last phase has ended, the end_behavior."""

    object = 'subscription_schedule'
    _id_prefix = 'sub_sched_'

    def __init__(self, subscription, created):
        super().__init__(created=created)
        self.subscription = subscription.id
        self.customer = subscription.customer
        self.status = 'active'
        self.end_behavior = 'release'
        self.phases = []
        self.metadata = {}
        self.released_at = None
        self.released_subscription = None
        self.canceled_at = None
        self.completed_at = None

    def _sub(self):
        return store.get(f'subscription:{self.subscription}') if self.subscription else None

    def _current_phase(self):
        if self.status != 'active':
            return None
        sub = self._sub()
        now = sub._now() if sub else wall()
        for ph in self.phases:
            if ph['start_date'] <= now < ph['end_date']:
                return ph
        return None

    def _export_phase(self, ph):
        currency = store[f'price:{ph["items"][0]["price"]}'].currency
        return {
            'add_invoice_items': [], 'application_fee_percent': None,
            'automatic_tax': {'disabled_reason': None, 'enabled': False, 'liability': None},
            'billing_cycle_anchor': None, 'billing_thresholds': None,
            'collection_method': None, 'currency': currency, 'default_payment_method': None,
            'default_tax_rates': [], 'description': None, 'discounts': [],
            'end_date': ph['end_date'], 'invoice_settings': None,
            'items': [{'billing_thresholds': None, 'discounts': [],
                       'metadata': dict(it['metadata']), 'plan': it['price'],
                       'price': it['price'], 'quantity': it['quantity'], 'tax_rates': []}
                      for it in ph['items']],
            'metadata': dict(ph['metadata']), 'on_behalf_of': None,
            'proration_behavior': ph['proration_behavior'], 'start_date': ph['start_date'],
            'transfer_data': None, 'trial_end': ph.get('trial_end'),
        }

    def _fields(self):
        cur = self._current_phase()
        return {
            'id': self.id, 'object': 'subscription_schedule', 'application': None,
            'billing_mode': {'flexible': {'proration_discounts': 'included'},
                             'type': 'flexible', 'updated_at': self.created},
            'canceled_at': self.canceled_at, 'completed_at': self.completed_at,
            'created': self.created,
            'current_phase': ({'end_date': cur['end_date'], 'start_date': cur['start_date']}
                              if cur else None),
            'customer': self.customer, 'customer_account': None,
            'default_settings': {
                'application_fee_percent': None,
                'automatic_tax': {'disabled_reason': None, 'enabled': False,
                                  'liability': None},
                'billing_cycle_anchor': 'automatic', 'billing_thresholds': None,
                'collection_method': 'charge_automatically', 'default_payment_method': None,
                'description': None,
                'invoice_settings': {'account_tax_ids': None, 'days_until_due': None,
                                     'issuer': {'type': 'self'}},
                'on_behalf_of': None, 'transfer_data': None,
            },
            'end_behavior': self.end_behavior, 'livemode': False,
            'metadata': dict(self.metadata),
            'phases': [self._export_phase(ph) for ph in self.phases],
            'released_at': self.released_at,
            'released_subscription': self.released_subscription, 'status': self.status,
            'subscription': self.subscription, 'test_clock': None,
        }


# ---------------------------------------------------------------------------------------------
# Billing engine.  Updates and previews share these functions, so a preview made with a given
# proration_date shows exactly the lines the update with that proration_date invoices.
# ---------------------------------------------------------------------------------------------

def subscription_price(price_id, param, currency=None, interval=None):
    """A price usable on a subscription item (recurring, active, same currency and interval)."""
    price = Price.get(price_id, param=param, status=400)
    if not price.recurring:
        raise invalid('The price specified is set to `type=one_time` but this field only '
                      'accepts prices with `type=recurring`.', param=param)
    if not price.active:
        raise invalid('The price specified is inactive. This field only accepts active '
                      'prices.', param=param)
    if currency is not None and price.currency != currency:
        raise invalid('Currency and interval fields must match across all plans on this '
                      'subscription. Found mismatch in currency field.', param=param)
    if interval is not None and (price.interval, price.interval_count) != interval:
        raise unsupported('changing the billing interval of a subscription', param=param)
    return price


def is_metered(price):
    """Whether a price bills a Billing Meter's usage (in arrears) rather than a quantity."""
    return bool(price.recurring) and price.recurring.get('usage_type') == 'metered'


def item_quantity(price, quantity, param, current=None):
    """The quantity an item of `price` has: none for a metered price (Stripe refuses one:
    "Quantity should not be specified where usage_type is `metered`"), else the one given, the
    item's current one, or 1."""
    if is_metered(price):
        if quantity is not None:
            raise invalid('Quantity should not be specified where usage_type is `metered`. '
                          f'Remove quantity from `{param}`.', param=param)
        return None
    return quantity if quantity is not None else (current or 1)


def parse_item_specs(item_params, allow_id=True):
    """items[n][id|price|plan|quantity|deleted|metadata] -> plain dicts."""
    specs = []
    for ip in item_params or []:
        if ip.raw('price_data') is not None:
            raise unsupported('price_data', param=ip.name('price_data'))
        ip.ignore('clear_usage', 'tax_rates', 'discounts')
        specs.append({
            'id': ip.str('id') if allow_id else None,
            'price': ip.str('price') or ip.str('plan'),
            'quantity': ip.int('quantity', minimum=1),
            'deleted': ip.bool('deleted', default=False),
            'metadata': ip.metadata(),
            'param': ip.name('price'),
            'qty_param': ip.name('quantity'),
            'id_param': ip.name('id'),
        })
    return specs


class ItemChange:
    """A subscription item before and after an update.  `item` is None for an item being added
    (`placeholder_id` then names it in previews); `new_price` is None for a deleted item."""

    def __init__(self, item, old_price, old_qty, new_price, new_qty, metadata=None):
        self.item = item
        self.old_price, self.old_qty = old_price, old_qty
        self.new_price, self.new_qty = new_price, new_qty
        self.metadata = metadata
        self.placeholder_id = new_id('si_tmp_')

    @property
    def changed(self):
        return (self.old_price, self.old_qty) != (self.new_price, self.new_qty)

    @property
    def item_id(self):
        return self.item.id if self.item else self.placeholder_id


def plan_item_changes(sub, specs):
    """Validate requested item changes against `sub` without changing anything."""
    changes, seen = [], set()
    interval = sub._interval()
    for s in specs:
        if s['id']:
            item = next((i for i in sub._items if i.id == s['id']), None)
            if item is None:
                raise no_such('subscription item', s['id'], param=s['id_param'], status=400)
            if item.id in seen:
                raise invalid(f'The subscription item {item.id} was given more than once.',
                              param=s['id_param'])
            seen.add(item.id)
            if s['deleted']:
                changes.append(ItemChange(item, item.price, item.quantity, None, None))
                continue
            price = (subscription_price(s['price'], s['param'], sub.currency, interval)
                     if s['price'] else item._price())
            qty = item_quantity(price, s['quantity'], s.get('qty_param', 'quantity'),
                                item.quantity)
            changes.append(ItemChange(item, item.price, item.quantity, price.id, qty,
                                      s['metadata']))
        else:
            if not s['price']:
                raise missing_param(s['param'])
            price = subscription_price(s['price'], s['param'], sub.currency, interval)
            existing = next((i for i in sub._items if i.price == price.id), None)
            if existing is not None and existing.id not in seen:
                raise invalid('Cannot add multiple subscription items with the same price: '
                              f'{price.id}. Change the quantity of {existing.id} instead.',
                              param=s['param'])
            changes.append(ItemChange(None, None, None, price.id,
                                      item_quantity(price, s['quantity'],
                                                    s.get('qty_param', 'quantity')),
                                      s['metadata']))
    remaining = len(sub._items) - sum(1 for c in changes if c.item and c.new_price is None) \
        + sum(1 for c in changes if c.item is None)
    if remaining < 1:
        raise invalid('A subscription must have at least one active plan.', param='items')
    return changes


def proration_time(sub, proration_date, param):
    """The instant prorations are computed for: proration_date, or the subscription's now."""
    start, end = sub._period()
    t = proration_date if proration_date is not None else min(max(sub._now(), start), end)
    if not start <= t <= end:
        raise invalid(f'The proration_date {t} must be within the current billing period of '
                      f'the subscription ({start} to {end}).', param=param)
    return t


def last_billed_line(sub, item_id, price_id):
    """The invoice line that billed `item_id` at `price_id` most recently (the line a proration
    credit refers to), as {invoice, invoice_line_items}."""
    for inv in newest_first(i for i in objects('invoice') if i.subscription == sub.id):
        for line in inv.lines:
            s = line.spec
            if s['subscription_item'] == item_id and s['price'] == price_id and s['amount'] > 0:
                return {'invoice': inv.id, 'invoice_line_items': [line.id]}
    return None


def name_with_qty(price, qty):
    return f'{qty} × {price._product_name()}' if qty != 1 else price._product_name()


def proration_specs(sub, changes, t):
    """Stripe's time-proportional prorations for a change at `t` within the current period
    [start, end): for each changed item, a credit of -old × (end - t)/(end - start) ("Unused time
    on <old> after <date>") and a charge of +new × (end - t)/(end - start) ("Remaining time on
    <new> after <date>"), each rounded to the nearest minor unit.  Nothing during a trial (the
    trial costs nothing, so there is nothing to credit or charge)."""
    if sub.status == 'trialing':
        return []
    start, end = sub._period()
    if end <= start:
        return []
    specs = []
    for c in changes:
        if not c.changed:
            continue
        old_metered = c.old_price is not None and is_metered(store[f'price:{c.old_price}'])
        if old_metered and c.new_price != c.old_price and sub.billing_mode == 'flexible':
            # Removing a metered price (or changing it) bills the usage reported so far
            # (docs.stripe.com/billing/subscriptions/usage-based/manage-billing-setup).
            specs.append(metered_spec(sub, c.item_id, store[f'price:{c.old_price}'],
                                      usage_start(c.item, start), t, proration=True))
        if old_metered or (c.new_price is not None
                           and is_metered(store[f'price:{c.new_price}'])):
            continue  # metered items are billed in arrears by usage, never by time
        common = {'currency': sub.currency, 'period_start': t, 'period_end': end,
                  'proration': True, 'subscription': sub.id, 'subscription_item': c.item_id}
        if c.old_price is not None:
            old = store[f'price:{c.old_price}']
            amount = round_half_up(Fraction(old.unit_amount * c.old_qty * (end - t),
                                            end - start))
            specs.append(dict(common, amount=-amount, price=old.id, quantity=c.old_qty,
                              description=f'Unused time on {name_with_qty(old, c.old_qty)} '
                                          f'after {fmt_date(t)}',
                              credited=last_billed_line(sub, c.item_id, old.id)))
        if c.new_price is not None:
            new = store[f'price:{c.new_price}']
            amount = round_half_up(Fraction(new.unit_amount * c.new_qty * (end - t),
                                            end - start))
            specs.append(dict(common, amount=amount, price=new.id, quantity=c.new_qty,
                              description=f'Remaining time on {name_with_qty(new, c.new_qty)} '
                                          f'after {fmt_date(t)}'))
    return specs


def usage_start(item, period_start):
    """Where a metered item's usage starts counting: the period's start, or when the item (or
    its price) was put on the subscription later in the period."""
    since = getattr(item, '_usage_start', None) if item is not None else None
    return max(period_start, since) if since is not None else period_start


def metered_spec(sub, item_id, price, start, end, proration=False):
    """The line that bills a metered item's usage in [start, end): the quantity is the meter's
    aggregate of the customer's events in that window, the amount quantity × unit_amount_decimal
    rounded half up (docs.stripe.com/billing/subscriptions/usage-based/how-it-works).  While its
    invoice is a draft, the line follows the usage reported meanwhile (refresh_metered)."""
    spec = {'currency': sub.currency, 'period_start': start, 'period_end': end,
            'price': price.id, 'proration': proration, 'subscription': sub.id,
            'subscription_item': item_id,
            'metered': {'customer': sub.customer, 'meter': price.recurring['meter']}}
    refresh_metered(spec)
    return spec


def unit_fraction(price):
    return Fraction(Decimal(price.unit_amount_decimal)) if price.unit_amount_decimal \
        else Fraction(price.unit_amount)


def refresh_metered(spec):
    m = spec.get('metered')
    if m is None:
        return
    price = store[f'price:{spec["price"]}']
    meter = store[f'billing.meter:{m["meter"]}']
    qty = int(meter_aggregate(meter, m['customer'], spec['period_start'], spec['period_end']))
    spec['quantity'] = qty
    spec['amount'] = round_half_up(qty * unit_fraction(price))
    spec['unit_amount_decimal'] = (price.unit_amount_decimal or str(price.unit_amount))
    spec['description'] = (f'{qty} × {price._product_name()} (at '
                           f'{price.unit_amount_decimal or price.unit_amount} / unit)')


def metered_specs(sub, items, period_start, period_end):
    """The usage lines of the metered items in `items` (SubscriptionItem objects) for the
    period [period_start, period_end) that is closing."""
    return [metered_spec(sub, i.id, i._price(), usage_start(i, period_start), period_end)
            for i in items if is_metered(i._price())]


def cycle_specs(sub, items, period_start, period_end):
    """Lines of a renewal: one per licensed item at its full price for [period_start,
    period_end) (metered items are billed in arrears: metered_specs).
    `items` is a list of (item_id, price_id, quantity)."""
    specs = []
    for item_id, price_id, qty in items:
        price = store[f'price:{price_id}']
        if is_metered(price):
            continue
        per = (f'/ {price.interval}' if price.interval_count == 1
               else f'every {price.interval_count} {price.interval}s')
        specs.append({'amount': price.unit_amount * qty, 'currency': sub.currency,
                      'description': f'{qty} × {price._product_name()} '
                                     f'(at {money(price.unit_amount, sub.currency)} {per})',
                      'period_start': period_start, 'period_end': period_end,
                      'price': price.id, 'quantity': qty, 'proration': False,
                      'subscription': sub.id, 'subscription_item': item_id})
    return specs


def trial_specs(sub):
    return [{'amount': 0, 'currency': sub.currency,
             'description': f'Trial period for {i._price()._product_name()}',
             'period_start': sub.trial_start, 'period_end': sub.trial_end, 'price': i.price,
             'quantity': i.quantity, 'proration': False, 'subscription': sub.id,
             'subscription_item': i.id} for i in sub._items if not is_metered(i._price())]


def pending_items(sub):
    return newest_first(ii for ii in objects('invoiceitem')
                        if ii.invoice is None and ii.spec['subscription'] == sub.id)[::-1]


def item_state_after(sub, changes):
    """(item_id, price_id, quantity) of every item once `changes` are applied."""
    by_item = {c.item.id: c for c in changes if c.item}
    state = []
    for i in sub._items:
        c = by_item.get(i.id)
        if c is None:
            state.append((i.id, i.price, i.quantity))
        elif c.new_price is not None:
            state.append((i.id, c.new_price, c.new_qty))
    state += [(c.item_id, c.new_price, c.new_qty) for c in changes if c.item is None]
    return state


# --- payments ---------------------------------------------------------------------------------

def default_payment_method(sub, customer):
    """Stripe's order: the subscription's default payment method, then the customer's
    invoice_settings.default_payment_method."""
    pm_id = (sub.default_payment_method if sub else None) or customer.default_payment_method
    return store.get(f'payment_method:{pm_id}') if pm_id else None


def charge_error(customer, sub, amount, pm=None):
    """None if charging `amount` now would succeed, else the error the charge raises."""
    if amount <= 0:
        return None
    pm = pm or default_payment_method(sub, customer)
    if pm is None:
        return invalid('This customer has no attached payment source or default payment '
                       'method. Please consider adding a default payment method.',
                       code='resource_missing')
    decline = pm._decline('charge')
    if decline:
        return card_error(*decline)
    return None


def finalize_invoice(inv):
    """draft -> open: apply the customer's balance, number the invoice, freeze the customer's
    details.  A $0 invoice is paid at once, as Stripe does."""
    inv._refresh()
    cust = store[f'customer:{inv.customer}']
    now = inv._clock()
    total = inv.total
    inv.starting_balance = cust.balance
    inv.ending_balance = min(0, total + cust.balance)
    inv._amount_due = max(0, total + cust.balance)
    cust.balance = inv.ending_balance
    inv.status = 'open'
    inv.number = f'{cust.invoice_prefix}-{cust.next_invoice_sequence:04d}'
    cust.next_invoice_sequence += 1
    inv.status_transitions['finalized_at'] = now
    inv.effective_at = now
    inv._customer_snapshot = {'email': cust.email, 'name': cust.name, 'phone': cust.phone,
                              'address': cust.address}
    emit('invoice.finalized', inv)
    if inv._amount_due == 0:
        mark_invoice_paid(inv)


def mark_invoice_paid(inv):
    inv.status = 'paid'
    inv.amount_paid = inv.amount_due
    inv.auto_advance = False
    inv.next_payment_attempt = None
    inv.status_transitions['paid_at'] = inv._clock()
    emit('invoice.paid', inv)
    emit('invoice.payment_succeeded', inv)
    apply_paid_pending_update(inv)
    sub = store.get(f'subscription:{inv.subscription}') if inv.subscription else None
    if sub and sub.latest_invoice == inv.id and sub.status in ('incomplete', 'past_due',
                                                               'unpaid'):
        before = sub._export()
        sub.status = 'active'
        emit('customer.subscription.updated', sub, before)


def attempt_payment(inv, pm=None):
    """Charge an open invoice; returns None when paid, else the payment error (the invoice
    stays open and invoice.payment_failed is sent)."""
    cust = store[f'customer:{inv.customer}']
    sub = store.get(f'subscription:{inv.subscription}') if inv.subscription else None
    inv.attempt_count += 1
    inv.attempted = True
    err = charge_error(cust, sub, inv.amount_due - inv.amount_paid, pm)
    if err is None:
        mark_invoice_paid(inv)
        return None
    if inv.billing_reason in DUNNING_REASONS:
        schedule_retry(inv)  # dunning: the account's retry schedule (see "Dunning" below)
    else:
        inv.next_payment_attempt = inv._clock() + 3 * 86400  # informative only
    emit('invoice.payment_failed', inv)
    return err


def bill_pending(inv):
    for ii in objects('invoiceitem'):
        if ii.invoice is None and ii.id in {line.spec.get('invoice_item') for line in inv.lines}:
            ii.invoice = inv.id


# --- creating, updating, renewing and ending subscriptions -------------------------------------

def create_subscription(cust, specs, trial_end, metadata, description, default_pm,
                        payment_behavior, missing_pm, save_default_pm, billing_mode,
                        cancel_at_period_end):
    """POST /v1/subscriptions.  With a trial: status trialing, items billed for
    [now, trial_end), a $0 invoice.  Without: the first period is invoiced and charged;
    allow_incomplete leaves an unpaid subscription `incomplete`, default_incomplete does not
    charge, error_if_incomplete refuses (402) and creates nothing."""
    now = wall()
    prices = []
    for s in specs:
        if s['id']:
            raise invalid('Received unknown parameter: ' + s['id_param'], param=s['id_param'],
                          code='parameter_unknown')
        if not s['price']:
            raise missing_param(s['param'])
        first = prices[0] if prices else None
        price = subscription_price(s['price'], s['param'], first and first.currency,
                                   first and (first.interval, first.interval_count))
        if any(p.id == price.id for p in prices):
            raise invalid('Cannot add multiple subscription items with the same price.',
                          param=s['param'])
        prices.append(price)
    if not prices:
        raise missing_param('items')
    quantities = [item_quantity(p, s['quantity'], s['qty_param']) for p, s in zip(prices, specs)]
    interval = (prices[0].interval, prices[0].interval_count)
    trial = trial_end is not None and trial_end > now
    period_end = trial_end if trial else add_interval(now, *interval)
    first_amount = 0 if trial else sum(p.unit_amount * q for p, q in zip(prices, quantities)
                                       if not is_metered(p))
    # Decide the payment outcome first, so that error_if_incomplete creates nothing.
    pm = store.get(f'payment_method:{default_pm}') if default_pm else None
    err = None
    if payment_behavior != 'default_incomplete':
        err = charge_error(cust, None, max(0, first_amount + cust.balance), pm)
    if err is not None and payment_behavior == 'error_if_incomplete':
        raise err

    sub = Subscription(cust.id, prices[0].currency, now, metadata, description, default_pm,
                       billing_mode, missing_pm, save_default_pm)
    sub.cancel_at_period_end = cancel_at_period_end
    for p, s, q in zip(prices, specs, quantities):
        sub._items.append(SubscriptionItem(sub.id, p.id, q, s['metadata'], now, period_end,
                                           created=now))
    if cust.currency is None:
        cust.currency = sub.currency
    if trial:
        sub.trial_start, sub.trial_end = now, trial_end
        sub.billing_cycle_anchor = trial_end
        sub.status = 'trialing'
        lines = trial_specs(sub)
    else:
        sub.status = 'active' if err is None and payment_behavior != 'default_incomplete' \
            else 'incomplete'
        lines = cycle_specs(sub, [(i.id, i.price, i.quantity) for i in sub._items], now,
                            period_end)
    sub._anchor = sub.billing_cycle_anchor
    if cancel_at_period_end:
        sub.cancel_at = period_end
        sub.canceled_at = now
        sub.cancellation_details['reason'] = 'cancellation_requested'
    inv = Invoice(cust, sub, 'subscription_create', now, now, now, lines)
    sub.latest_invoice = inv.id
    emit('customer.subscription.created', sub)
    emit('invoice.created', inv)
    finalize_invoice(inv)
    if inv.status == 'open':
        # issue 20 follow-up (helper D): see 'first invoices that need 3-D Secure' below.
        charge_first_invoice(inv, pm, attempt=payment_behavior != 'default_incomplete')
    return sub


def apply_item_changes(sub, changes):
    """Make the planned changes real; the billing period does not move."""
    start, end = sub._period()
    for c in changes:
        if c.item is None:  # the preview's si_tmp_X becomes si_X
            item = SubscriptionItem(sub.id, c.new_price, c.new_qty, c.metadata, start, end,
                                    created=sub._now(),
                                    id=c.placeholder_id.replace('si_tmp_', 'si_'))
            item._usage_start = sub._now()
            c.item = item
            sub._items.append(item)
        elif c.new_price is None:
            sub._items.remove(c.item)
            store.pop(f'subscription_item:{c.item.id}', None)
        else:
            if c.item.price != c.new_price:
                c.item._usage_start = sub._now()
            c.item.price, c.item.quantity = c.new_price, c.new_qty
            if c.metadata is not None:
                c.item.metadata = merge_metadata(c.item.metadata, c.metadata)


def update_subscription(sub, u):
    """POST /v1/subscriptions/{id} (and POST /v1/subscription_items/{id}).  `u` holds the parsed
    parameters.  Price changes take effect now; the period does not change.  Prorations:
    create_prorations (default) leaves them pending for the next invoice, always_invoice
    invoices them at once (charged with the default payment method), none creates none."""
    if sub.status in ('canceled', 'incomplete_expired'):
        if set(u) - {'metadata', 'cancellation_details'}:
            raise invalid('A canceled subscription can only update its cancellation_details '
                          'and metadata.')
    if sub.schedule and (u.get('cancel_at_period_end') is not None or 'cancel_at' in u):
        raise invalid(f'The subscription is managed by the subscription schedule '
                      f'`{sub.schedule}`, and updating any cancelation behavior directly is '
                      'not allowed. Please update the schedule instead.')
    cust = store[f'customer:{sub.customer}']
    if u.get('default_payment_method'):
        customer_payment_method(cust, u['default_payment_method'], 'default_payment_method')
    changes = plan_item_changes(sub, u['items']) if u.get('items') else []
    changed = [c for c in changes if c.changed]
    behavior = u.get('proration_behavior') or 'create_prorations'
    payment_behavior = u.get('payment_behavior') or 'allow_incomplete'
    specs = []
    if changed and behavior != 'none':
        t = proration_time(sub, u.get('proration_date'), 'proration_date')
        specs = proration_specs(sub, changed, t)
    invoice_now = behavior == 'always_invoice' and bool(specs)
    if payment_behavior == 'pending_if_incomplete':
        pending = pending_update_if_unpaid(sub, cust, u, changes, specs, invoice_now)
        if pending is not None:
            return pending
    if invoice_now and payment_behavior == 'error_if_incomplete':
        amount = sum(s['amount'] for s in specs) + sum(ii.spec['amount']
                                                      for ii in pending_items(sub))
        pm = (store.get(f'payment_method:{u["default_payment_method"]}')
              if u.get('default_payment_method') else None)
        err = charge_error(cust, sub, max(0, amount + cust.balance), pm)
        if err:
            raise err

    before = sub._export()
    now = sub._now()
    if u.get('metadata') is not None:
        sub.metadata = merge_metadata(sub.metadata, u['metadata'])
    if 'description' in u:
        sub.description = u['description'] or None
    if 'default_payment_method' in u:
        sub.default_payment_method = u['default_payment_method'] or None
    if u.get('cancellation_details') is not None:
        sub.cancellation_details.update(u['cancellation_details'])
    if u.get('cancel_at_period_end') is not None:
        sub.cancel_at_period_end = u['cancel_at_period_end']
        if sub.cancel_at_period_end:
            sub.cancel_at = sub._period()[1]
            sub.canceled_at = now
            sub.cancellation_details['reason'] = 'cancellation_requested'
        else:
            sub.cancel_at = sub.canceled_at = None
            sub.cancellation_details = {'comment': None, 'feedback': None, 'reason': None}
    if 'cancel_at' in u:
        sub.cancel_at = u['cancel_at']
        sub.canceled_at = now if sub.cancel_at else None
        sub.cancellation_details['reason'] = 'cancellation_requested' if sub.cancel_at else None
    if u.get('trial_end') is not None:
        change_trial_end(sub, u['trial_end'])
    apply_item_changes(sub, changes)
    for s in specs:  # new items got their real ids in apply_item_changes
        for c in changes:
            if s['subscription_item'] == c.placeholder_id:
                s['subscription_item'] = c.item.id
        InvoiceItem(sub.customer, s, now)
    inv = None
    if invoice_now:
        lines = [ii.spec for ii in pending_items(sub)]
        inv = Invoice(cust, sub, 'subscription_update', now, now, now, lines)
        bill_pending(inv)
        sub.latest_invoice = inv.id
    emit('customer.subscription.updated', sub, before)
    if inv is not None:
        emit('invoice.created', inv)
        finalize_invoice(inv)
        if inv.status == 'open':
            failed = (payment_behavior == 'default_incomplete'
                      or attempt_payment(inv) is not None)
            if failed and sub.status == 'active':
                before = sub._export()
                sub.status = 'past_due'
                emit('customer.subscription.updated', sub, before)
    return sub


# --- issue 20 (defect 6): pending updates and 3-D Secure ---------------------------------------
# https://docs.stripe.com/billing/subscriptions/pending-updates: with
# payment_behavior=pending_if_incomplete, an update whose invoice is not paid at once changes
# nothing; its values wait in `pending_update` (expiring 23 h later) and `latest_invoice` is the
# open invoice. Paying that invoice applies them and clears `pending_update`; an expired one is
# discarded. https://docs.stripe.com/testing#regulatory-cards: 4000002760003184 needs 3-D Secure,
# so the invoice's payment `requires_action` with a client secret
# (`confirmation_secret`, https://docs.stripe.com/api/invoices/object#invoice_object-confirmation_secret)
# and `invoice.payment_action_required` is sent; a declined card sends `invoice.payment_failed`.
# POST /_test/payment_intents/{id}/confirm stands in for Stripe.js confirming it.

PENDING_UPDATE_TTL = 23 * 3600
PENDING_UPDATE_PARAMS = {'items', 'proration_behavior', 'proration_date', 'payment_behavior',
                         'trial_end', 'cancel_at_period_end'}


def _pending_of(sub):
    """The subscription's pending update, or None (an expired one is discarded)."""
    pending = getattr(sub, '_pending_update', None)
    if pending is not None and sub._now() >= pending['expires_at']:
        sub._pending_update = pending = None
    return pending


def export_pending_update(sub):
    pending = _pending_of(sub)
    if pending is None:
        return None
    items = []
    for c in pending['changes']:
        exported = c.item._export()
        price = store[f'price:{c.new_price}']
        exported.update({'price': price._export(), 'plan': price._plan(),
                         'quantity': c.new_qty})
        items.append(exported)
    return {'billing_cycle_anchor': None, 'expires_at': pending['expires_at'],
            'subscription_items': items, 'trial_end': None, 'trial_from_plan': None}


def invoice_confirmation_secret(inv):
    pi = getattr(inv, '_payment_intent', None)
    if pi is None or inv.status != 'open':
        return None
    return {'client_secret': pi['client_secret'], 'type': 'payment_intent'}


def pending_update_if_unpaid(sub, cust, u, changes, specs, invoice_now):
    """pending_if_incomplete: None when the update's invoice would be paid at once (the update
    then proceeds as usual), else the subscription with the update left pending."""
    if not invoice_now:
        return None
    extra = {k for k, v in u.items() if v is not None} - PENDING_UPDATE_PARAMS
    if extra:
        raise invalid('Pending updates only support the parameters items, price, quantity, '
                      'proration_behavior, proration_date, billing_cycle_anchor, trial_end and '
                      f'trial_from_plan; got {sorted(extra)[0]}.', param=sorted(extra)[0])
    if any(c.item is None or c.new_price is None for c in changes if c.changed):
        raise unsupported('pending updates that add or remove items', param='items')
    amount = sum(s['amount'] for s in specs)
    pm = default_payment_method(sub, cust)
    err = charge_error(cust, sub, max(0, amount + cust.balance), pm)
    if err is None:
        return None
    before = sub._export()
    now = sub._now()
    inv = Invoice(cust, sub, 'subscription_update', now, now, now, specs)
    sub.latest_invoice = inv.id
    sub._pending_update = {'changes': [c for c in changes if c.changed], 'invoice': inv.id,
                           'expires_at': now + PENDING_UPDATE_TTL}
    emit('customer.subscription.updated', sub, before)
    emit('invoice.created', inv)
    finalize_invoice(inv)
    if inv.status != 'open':
        return sub
    pi_id = new_id('pi_')
    needs_action = pm is not None and pm._decline('charge') is not None and \
        pm._decline('charge')[0] == 'authentication_required'
    inv._payment_intent = {'id': pi_id, 'client_secret': f'{pi_id}_secret_{new_id("", 24)}',
                           'status': ('requires_action' if needs_action
                                      else 'requires_payment_method')}
    if needs_action:
        inv.attempt_count += 1
        inv.attempted = True
        emit('invoice.payment_action_required', inv)
    else:
        attempt_payment(inv)
    return sub


def apply_paid_pending_update(inv):
    """Paying the invoice of a pending update applies the update."""
    sub = store.get(f'subscription:{inv.subscription}') if inv.subscription else None
    if sub is None:
        return
    pending = _pending_of(sub)
    if pending is None or pending['invoice'] != inv.id:
        return
    before = sub._export()
    apply_item_changes(sub, pending['changes'])
    sub._pending_update = None
    pi = getattr(inv, '_payment_intent', None)
    if pi is not None:
        pi['status'] = 'succeeded'
    emit('customer.subscription.updated', sub, before)


def change_trial_end(sub, trial_end):
    """trial_end=now ends the trial now (a new cycle starts and is invoiced); a timestamp moves
    the end of a running trial."""
    if sub.status != 'trialing':
        raise unsupported('adding a trial to a subscription that is not trialing',
                          param='trial_end')
    if trial_end == 'now':  # Stripe also sends trial_will_end when a trial is ended early
        emit('customer.subscription.trial_will_end', sub)
        renew_subscription(sub, at=sub._now(), reanchor=True, emit_update=False)
        return
    if trial_end <= sub._now():
        raise invalid('Invalid timestamp: must be in the future', param='trial_end')
    sub.trial_end = sub.billing_cycle_anchor = sub._anchor = trial_end
    for i in sub._items:
        i.current_period_end = trial_end


def end_subscription(sub, at, reason=None):
    """The subscription ends now (DELETE) or at the end of its period."""
    sub.status = 'canceled'
    sub.ended_at = at
    sub.canceled_at = sub.canceled_at or at
    if reason:
        sub.cancellation_details['reason'] = reason
    sched = store.get(f'subscription_schedule:{sub.schedule}') if sub.schedule else None
    if sched is not None and sched.status == 'active':
        before = sched._export()
        sched.status = 'canceled'
        sched.canceled_at = at
        emit('subscription_schedule.canceled', sched, before)
    emit('customer.subscription.deleted', sub)


def apply_schedule(sub, boundary):
    """At a renewal, apply the schedule phase that starts at the boundary (its prices replace
    the items' prices, without proration) and, once the last phase has ended, the schedule's
    end_behavior: `release` (the subscription continues on its own) or `cancel`.
    Returns the events to send after customer.subscription.updated."""
    sched = store.get(f'subscription_schedule:{sub.schedule}') if sub.schedule else None
    if sched is None or sched.status != 'active':
        return []
    before = sched._export()
    later = []
    phase = next((ph for ph in sched.phases if ph['start_date'] <= boundary < ph['end_date']),
                 None)
    if phase is not None:
        wanted = [(it['price'], it['quantity']) for it in phase['items']]
        if wanted != [(i.price, i.quantity) for i in sub._items]:
            start, end = sub._period()
            for idx, (price, qty) in enumerate(wanted):
                if idx < len(sub._items):
                    if sub._items[idx].price != price:
                        sub._items[idx]._usage_start = boundary
                    sub._items[idx].price, sub._items[idx].quantity = price, qty
                else:
                    sub._items.append(SubscriptionItem(sub.id, price, qty, None, start, end,
                                                       created=boundary))
            for extra in sub._items[len(wanted):]:
                store.pop(f'subscription_item:{extra.id}', None)
            del sub._items[len(wanted):]
        later.append(('subscription_schedule.updated', sched, before))
    elif sched.phases and boundary >= sched.phases[-1]['end_date']:
        if sched.end_behavior == 'cancel':
            sched.status = 'completed'
            sched.completed_at = boundary
            later.append(('subscription_schedule.completed', sched, None))
            return later + [('cancel', sub, boundary)]
        sched.status = 'released'
        sched.released_at = boundary
        sched.released_subscription = sub.id
        sched.subscription = None
        sub.schedule = None
        later.append(('subscription_schedule.released', sched, None))
    return later


def renew_subscription(sub, at=None, reanchor=False, emit_update=True):
    """Start the next billing cycle: used by POST /_test/subscriptions/{id}/advance (at = the
    end of the current period, possibly ahead of the wall clock) and by trial_end=now.
    Trial end, cancel_at_period_end and due schedule phases are applied; the renewal invoice is
    created, finalized and charged; an unpaid renewal makes the subscription past_due."""
    if sub.status in ('canceled', 'incomplete_expired', 'incomplete', 'paused'):
        raise invalid(f'The emulator cannot renew a subscription whose status is '
                      f'{sub.status}.', param='subscription')
    cust = store[f'customer:{sub.customer}']
    before = sub._export() if emit_update else None
    start, end = sub._period()
    boundary = end if at is None else at
    finalize_due_drafts(sub, boundary)
    sub._sim_time = max(sub._sim_time, boundary)
    # The closing period's usage, billed in arrears by the items in force until now.
    usage = metered_specs(sub, sub._items, start, boundary)
    if sub.cancel_at_period_end or (sub.cancel_at is not None and sub.cancel_at <= boundary):
        end_subscription(sub, boundary)
        if usage:  # the final invoice bills the last period's usage
            inv = Invoice(cust, sub, 'subscription_cycle', boundary, start, boundary, usage)
            sub.latest_invoice = inv.id
            await_grace(inv, boundary)
        return sub
    if sub.status == 'trialing':
        if sub.trial_end is not None:
            sub.trial_end = min(sub.trial_end, boundary)
        if default_payment_method(sub, cust) is None and sub._missing_payment_method != \
                'create_invoice':
            if sub._missing_payment_method == 'cancel':
                end_subscription(sub, boundary, reason='payment_failed')
            else:
                sub.status = 'paused'
                emit('customer.subscription.paused', sub)
                emit('customer.subscription.updated', sub, before)
            return sub
        sub.status = 'active'
    if reanchor:
        sub.billing_cycle_anchor = sub._anchor = boundary
    later = apply_schedule(sub, boundary)
    if any(ev[0] == 'cancel' for ev in later):
        for type, obj, b in later:
            if type != 'cancel':
                emit(type, obj, b)
        end_subscription(sub, boundary)
        return sub
    interval = sub._interval()
    new_end = next_boundary(sub._anchor, *interval, boundary)
    for i in sub._items:
        i.current_period_start, i.current_period_end = boundary, new_end
    lines = [ii.spec for ii in pending_items(sub)]
    lines += usage
    lines += cycle_specs(sub, [(i.id, i.price, i.quantity) for i in sub._items], boundary,
                         new_end)
    inv = Invoice(cust, sub, 'subscription_cycle', boundary, start, boundary, lines)
    bill_pending(inv)
    sub.latest_invoice = inv.id
    if emit_update:
        emit('customer.subscription.updated', sub, before)
    for type, obj, b in later:
        emit(type, obj, b)
    if usage:
        await_grace(inv, boundary)
        return sub
    emit('invoice.created', inv)
    charge_renewal(sub, inv)
    return sub


# --- usage billed in arrears: the renewal's draft and its grace ---------------------------------
# https://docs.stripe.com/billing/subscriptions/usage-based/configure-grace-period and
# https://docs.stripe.com/invoicing/integration/workflow-transitions: a renewal invoice is created as a
# draft (`invoice.created`) and finalized about an hour later (`automatically_finalizes_at`); meter
# events timestamped in the closed period that arrive meanwhile still land on it.  The emulator keeps
# the renewal of a subscription with metered items a draft for INVOICE_GRACE seconds of the
# subscription's clock; other renewals are finalized at once, as before.

INVOICE_GRACE = 3600


def await_grace(inv, at):
    inv._finalizes_at = at + INVOICE_GRACE
    emit('invoice.created', inv)


def charge_renewal(sub, inv):
    """Finalize a renewal invoice and charge it; unpaid, the subscription becomes past_due."""
    finalize_invoice(inv)
    if inv.status == 'open' and attempt_payment(inv) is not None and sub.status != 'canceled':
        before = sub._export()
        sub.status = 'past_due'
        emit('customer.subscription.updated', sub, before)


def finalize_due_drafts(sub, until):
    """Finalize (and charge) the subscription's drafts whose grace ends before `until`, in
    order, with the usage reported by then; the subscription's clock moves to each."""
    due = sorted((i for i in objects('invoice') if i.subscription == sub.id
                  and i.status == 'draft' and getattr(i, '_finalizes_at', None) is not None
                  and i._finalizes_at <= until), key=lambda i: (i._finalizes_at, i._seq))
    for inv in due:
        sub._sim_time = max(sub._sim_time, inv._finalizes_at)
        charge_renewal(sub, inv)


# --- previews ----------------------------------------------------------------------------------

def preview_invoice(cust, sub, specs, behavior, proration_date, preview_mode,
                    cancel_at_period_end):
    """POST /v1/invoices/create_preview: the invoice an update would produce, computed with the
    functions the update uses and stored nowhere.

    * always_invoice with a price change: the invoice the update creates at once (the proration
      lines, plus pending invoice items of the subscription);
    * otherwise: the next renewal invoice at the prices in force after the update (or after a
      schedule phase due at the renewal), preceded by the prorations for create_prorations."""
    if sub is None:
        if not specs:
            raise invalid(f'No upcoming invoices for customer: {cust.id}', status=404,
                          code='invoice_upcoming_none')
        now = wall()
        fake = Subscription.__new__(Subscription)
        fake.id, fake.metadata = None, {}
        prices = [subscription_price(s['price'], s['param']) for s in specs]
        fake.currency = prices[0].currency
        end = add_interval(now, prices[0].interval, prices[0].interval_count)
        lines = cycle_specs(fake, [(new_id('si_tmp_'), p.id, s['quantity'] or 1)
                                   for p, s in zip(prices, specs)], now, end)
        for line in lines:
            line['subscription'] = None
        inv = Invoice(cust, None, 'subscription_create', now, now, now, lines, preview=True)
        return inv
    if sub.status in ('canceled', 'incomplete_expired'):
        raise invalid(f'No upcoming invoices for customer: {cust.id}', status=404,
                      code='invoice_upcoming_none')
    changes = plan_item_changes(sub, specs) if specs else []
    changed = [c for c in changes if c.changed]
    t = None
    prorations = []
    if changed and behavior != 'none' and preview_mode == 'next':
        t = proration_time(sub, proration_date, 'subscription_details[proration_date]')
        prorations = proration_specs(sub, changed, t)
    pending = [ii.spec for ii in pending_items(sub)] if preview_mode == 'next' else []
    start, end = sub._period()
    if behavior == 'always_invoice' and prorations:
        now = sub._now()
        inv = Invoice(cust, sub, 'subscription_update', now, now, now, pending + prorations,
                      preview=True)
    else:
        cancelling = sub.cancel_at_period_end if cancel_at_period_end is None \
            else cancel_at_period_end
        if cancelling or (sub.cancel_at is not None and sub.cancel_at <= end):
            raise invalid(f'No upcoming invoices for customer: {cust.id}', status=404,
                          code='invoice_upcoming_none')
        state = item_state_after(sub, changes)
        if not changed:  # a schedule phase due at the renewal sets the prices
            sched = store.get(f'subscription_schedule:{sub.schedule}') if sub.schedule else None
            phase = sched and next((ph for ph in sched.phases
                                    if ph['start_date'] <= end < ph['end_date']), None)
            if phase:
                ids = [i.id for i in sub._items] + [new_id('si_tmp_') for _ in phase['items']]
                state = [(ids[n], it['price'], it['quantity'])
                         for n, it in enumerate(phase['items'])]
        new_end = next_boundary(sub._anchor, *sub._interval(), end)
        extra = prorations if behavior == 'create_prorations' else []
        # The usage so far of the metered items, billed in arrears at the renewal.
        usage = metered_specs(sub, sub._items, start, end) if preview_mode == 'next' else []
        inv = Invoice(cust, sub, 'subscription_cycle', end, start, end,
                      pending + extra + usage + cycle_specs(sub, state, end, new_end),
                      preview=True)
    inv._proration_date = t
    return inv


# ---------------------------------------------------------------------------------------------
# API handlers.  Each takes the request's Params (and the URL's ids) and returns the response
# body; it reads every parameter it accepts and calls p.finish() before changing anything.
# ---------------------------------------------------------------------------------------------

ROUTES = []  # (method, path, handler)


def route(method, path):
    def deco(fn):
        ROUTES.append((method, path, fn))
        return fn
    return deco


def unsupported_params(p, *keys):
    for k in keys:
        if p.raw(k) not in (None, '', {}, []):
            raise unsupported(f'the `{k}` parameter', param=k)


def created_filter(p, items):
    """created=<ts> or created[gt|gte|lt|lte]=<ts>."""
    c = p.raw('created')
    if c is None:
        return items
    if isinstance(c, str):
        t = p.int('created')
        return [o for o in items if o.created == t]
    cp = p.sub('created')
    ops = {'gt': lambda a, b: a > b, 'gte': lambda a, b: a >= b,
           'lt': lambda a, b: a < b, 'lte': lambda a, b: a <= b}
    for op, f in ops.items():
        t = cp.int(op)
        if t is not None:
            items = [o for o in items if f(o.created, t)]
    return items


def deleted_object(obj):
    return {'id': obj.id, 'object': obj.object, 'deleted': True}


# --- products ---------------------------------------------------------------------------------

def _product_fields(p):
    return dict(description=p.str('description'), metadata=p.metadata(),
                images=p.strs('images'), statement_descriptor=p.str('statement_descriptor'),
                unit_label=p.str('unit_label'), url=p.str('url'), shippable=p.bool('shippable'),
                tax_code=p.str('tax_code'))


@route('POST', '/v1/products')
def products_create(p):
    name = p.str('name', required=True)
    kw = dict(id=p.str('id'), active=p.bool('active', default=True), **_product_fields(p))
    unsupported_params(p, 'default_price_data')
    p.ignore('type', 'marketing_features', 'package_dimensions')
    p.finish()
    prod = Product(name, **kw)
    emit('product.created', prod)
    return prod._export()


@route('GET', '/v1/products/{id}')
def products_retrieve(p, id):
    p.finish()
    return Product.get(id)._export()


@route('POST', '/v1/products/{id}')
def products_update(p, id):
    prod = Product.get(id)
    fields = {k: v for k, v in _product_fields(p).items() if v is not None}
    name = p.str('name')
    active = p.bool('active')
    default_price = p.str('default_price')
    p.ignore('marketing_features', 'package_dimensions')
    p.finish()
    if default_price:
        price = Price.get(default_price, param='default_price', status=400)
        if price.product != prod.id:
            raise invalid('The price must belong to this product.', param='default_price')
    before = prod._export()
    for k, v in fields.items():
        setattr(prod, k, merge_metadata(prod.metadata, v) if k == 'metadata' else v)
    if name is not None:
        prod.name = name
    if active is not None:
        prod.active = active
    if default_price is not None:
        prod.default_price = default_price or None
    prod.updated = wall()
    emit('product.updated', prod, before)
    return prod._export()


@route('DELETE', '/v1/products/{id}')
def products_delete(p, id):
    p.finish()
    prod = Product.get(id)
    if any(pr.product == id for pr in objects('price')):
        raise invalid('This product cannot be deleted because it has one or more user-created '
                      'prices.')
    del store[f'product:{id}']
    emit('product.deleted', prod)
    return deleted_object(prod)


@route('GET', '/v1/products')
def products_list(p):
    items = newest_first(objects('product'))
    active = p.bool('active')
    ids = p.strs('ids')
    items = created_filter(p, items)
    p.ignore('shippable', 'url')
    if active is not None:
        items = [o for o in items if o.active == active]
    if ids is not None:
        items = [o for o in items if o.id in ids]
    result = export_list(p, items, '/v1/products', 'product')
    p.finish()
    return result


# --- prices -----------------------------------------------------------------------------------

def _claim_lookup_key(key, transfer, param='lookup_key'):
    """Lookup keys are unique per account; transfer_lookup_key=true moves one to a new price."""
    holder = next((pr for pr in objects('price') if pr.lookup_key == key), None)
    if holder is None:
        return
    if not transfer:
        raise invalid(f'A price (`{holder.id}`) already uses that lookup key.', param=param)
    holder.lookup_key = None


@route('POST', '/v1/prices')
def prices_create(p):
    currency = p.str('currency', required=True).lower()
    unit_amount = p.int('unit_amount', minimum=0)
    decimal = p.str('unit_amount_decimal')
    fractional = None
    if unit_amount is None and decimal is not None:
        if re.fullmatch(r'\d+', decimal):
            unit_amount = int(decimal)
        elif re.fullmatch(r'\d+\.\d{1,12}', decimal):
            # Stripe answers the decimal normalised (no trailing zeros).
            fractional = format(Decimal(decimal).normalize(), 'f')
            if re.fullmatch(r'\d+', fractional):
                unit_amount, fractional = int(fractional), None
        else:
            raise invalid('Invalid decimal: ' + decimal, param='unit_amount_decimal')
    product_id = p.str('product')
    pd = p.sub('product_data')
    r = p.sub('recurring')
    recurring = None
    if r is not None:
        recurring = {'interval': r.str('interval', required=True,
                                       choices=('day', 'week', 'month', 'year')),
                     'interval_count': r.int('interval_count', default=1, minimum=1),
                     'meter': r.str('meter'), 'trial_period_days': None,
                     'usage_type': r.str('usage_type', default='licensed',
                                         choices=('licensed', 'metered'))}
        r.ignore('aggregate_usage', 'trial_period_days')
        # Since 2025-03-31.basil a metered price bills a Billing Meter's aggregate, and only it.
        if recurring['usage_type'] == 'metered':
            if recurring['meter'] is None:
                raise missing_param('recurring[meter]')
            Meter.get(recurring['meter'], param='recurring[meter]', status=400,
                      kind='billing.meter')
        elif recurring['meter'] is not None:
            raise invalid('`recurring[meter]` can only be set on a price with '
                          '`recurring[usage_type]=metered`.', param='recurring[meter]')
    lookup_key = p.str('lookup_key')
    transfer = p.bool('transfer_lookup_key', default=False)
    nickname = p.str('nickname')
    metadata = p.metadata()
    active = p.bool('active', default=True)
    tax_behavior = p.str('tax_behavior', default='unspecified',
                         choices=('exclusive', 'inclusive', 'unspecified'))
    p.str('billing_scheme', choices=('per_unit',))
    unsupported_params(p, 'tiers', 'tiers_mode', 'custom_unit_amount', 'transform_quantity',
                       'currency_options')
    pd_fields = None
    if pd is not None:
        pd_fields = dict(name=pd.str('name', required=True), id=pd.str('id'),
                         active=pd.bool('active', default=True), metadata=pd.metadata(),
                         statement_descriptor=pd.str('statement_descriptor'),
                         unit_label=pd.str('unit_label'), tax_code=pd.str('tax_code'))
    p.finish()
    if fractional is not None and (recurring is None or recurring['usage_type'] != 'metered'):
        raise unsupported('fractional unit_amount_decimal on a price that is not metered',
                          param='unit_amount_decimal')
    if unit_amount is None and fractional is None:
        raise missing_param('unit_amount')
    if (product_id is None) == (pd is None):
        raise (missing_param('product') if product_id is None else
               invalid('You may only specify one of these parameters: product, product_data.',
                       param='product_data'))
    if product_id is not None:
        Product.get(product_id, param='product', status=400)
    if lookup_key is not None:
        _claim_lookup_key(lookup_key, transfer)
    if pd_fields is not None:
        prod = Product(**pd_fields)
        emit('product.created', prod)
        product_id = prod.id
    price = Price(currency, unit_amount, product_id, recurring, lookup_key, nickname, metadata,
                  active, tax_behavior, fractional)
    emit('price.created', price)
    return price._export()


@route('GET', '/v1/prices/{id}')
def prices_retrieve(p, id):
    p.finish()
    return Price.get(id)._export()


@route('POST', '/v1/prices/{id}')
def prices_update(p, id):
    price = Price.get(id)
    active = p.bool('active')
    nickname = p.raw('nickname')
    lookup_key = p.raw('lookup_key')
    transfer = p.bool('transfer_lookup_key', default=False)
    metadata = p.metadata()
    tax_behavior = p.str('tax_behavior', choices=('exclusive', 'inclusive', 'unspecified'))
    p.finish()
    if lookup_key:
        if lookup_key != price.lookup_key:
            _claim_lookup_key(lookup_key, transfer)
    before = price._export()
    if active is not None:
        price.active = active
    if nickname is not None:
        price.nickname = nickname or None
    if lookup_key is not None:
        price.lookup_key = lookup_key or None
    if tax_behavior is not None:
        price.tax_behavior = tax_behavior
    price.metadata = merge_metadata(price.metadata, metadata)
    emit('price.updated', price, before)
    return price._export()


@route('GET', '/v1/prices')
def prices_list(p):
    items = created_filter(p, newest_first(objects('price')))
    active = p.bool('active')
    currency = p.str('currency')
    product = p.str('product')
    type = p.str('type', choices=('one_time', 'recurring'))
    lookup_keys = p.strs('lookup_keys')
    rec = p.sub('recurring')
    interval = rec.str('interval') if rec else None
    if rec:
        rec.ignore('usage_type', 'meter')
    if active is not None:
        items = [o for o in items if o.active == active]
    if currency is not None:
        items = [o for o in items if o.currency == currency.lower()]
    if product is not None:
        items = [o for o in items if o.product == product]
    if type is not None:
        items = [o for o in items if bool(o.recurring) == (type == 'recurring')]
    if lookup_keys is not None:
        if len(lookup_keys) > 10:
            raise invalid('You can pass at most 10 lookup keys.', param='lookup_keys')
        items = [o for o in items if o.lookup_key in lookup_keys]
    if interval is not None:
        items = [o for o in items if o.interval == interval]
    result = export_list(p, items, '/v1/prices', 'price')
    p.finish()
    return result


# --- billing meters and meter events -------------------------------------------------------------
#
# https://docs.stripe.com/api/billing/meter, .../meter-event/create, .../meter-event-summary.
# Meter events are not objects with ids: they are kept apart from the store (METER_EVENTS), with
# the identifiers seen in the last 24 hours (METER_IDENTIFIERS) for Stripe's uniqueness rule.

METER_EVENTS = []          # accepted and aggregated: dicts, in arrival order
METER_ERRORS = []          # accepted, then refused by the asynchronous validation (README)
METER_IDENTIFIERS = {}     # identifier -> wall time it was first seen
# Calls to POST /v1/billing/meter_events in flight, and the most seen at once, by (customer, event_name): a test
# aid (GET /_test/meter_concurrency), counted from before an injected delay to the answer, so a client that sends
# two calls for one customer and meter at once is seen doing so.
METER_IN_FLIGHT = {}
METER_MAX_IN_FLIGHT = {}
IDENTIFIER_WINDOW = 86400


class Meter(Resource):
    """A Billing Meter (https://docs.stripe.com/api/billing/meter/object)."""

    object = 'billing.meter'
    _id_prefix = 'mtr_'

    def __init__(self, display_name, event_name, formula, customer_key, value_key,
                 event_time_window=None):
        super().__init__()
        self.display_name = display_name
        self.event_name = event_name
        self.formula = formula
        self.customer_key = customer_key
        self.value_key = value_key
        self.event_time_window = event_time_window
        self.status = 'active'
        self.deactivated_at = None
        self.updated = self.created

    def _fields(self):
        return {
            'id': self.id, 'object': 'billing.meter', 'created': self.created,
            'customer_mapping': {'event_payload_key': self.customer_key, 'type': 'by_id'},
            'default_aggregation': {'formula': self.formula},
            'display_name': self.display_name, 'event_name': self.event_name,
            'event_time_window': self.event_time_window, 'livemode': False,
            'status': self.status, 'status_transitions': {'deactivated_at': self.deactivated_at},
            'updated': self.updated,
            'value_settings': {'event_payload_key': self.value_key},
        }


def active_meter(event_name):
    return next((m for m in objects('billing.meter')
                 if m.event_name == event_name and m.status == 'active'), None)


@route('POST', '/v1/billing/meters')
def meters_create(p):
    display_name = p.str('display_name', required=True)
    event_name = p.str('event_name', required=True)
    agg = p.sub('default_aggregation')
    if agg is None:
        raise missing_param('default_aggregation')
    formula = agg.str('formula', required=True, choices=('count', 'last', 'sum'))
    cm = p.sub('customer_mapping')
    customer_key = 'stripe_customer_id'
    if cm is not None:
        customer_key = cm.str('event_payload_key', required=True)
        cm.str('type', required=True, choices=('by_id',))
    vs = p.sub('value_settings')
    value_key = vs.str('event_payload_key', required=True) if vs is not None else 'value'
    window = p.str('event_time_window', choices=('day', 'hour'))
    p.finish()
    if len(event_name) > 100:
        raise invalid('Invalid event_name: must be at most 100 characters', param='event_name')
    if active_meter(event_name) is not None:
        raise invalid(f'An active meter with event_name `{event_name}` already exists.',
                      param='event_name')
    return Meter(display_name, event_name, formula, customer_key, value_key, window)._export()


@route('GET', '/v1/billing/meters/{id}')
def meters_retrieve(p, id):
    p.finish()
    return Meter.get(id, kind='billing.meter')._export()


@route('POST', '/v1/billing/meters/{id}')
def meters_update(p, id):
    meter = Meter.get(id, kind='billing.meter')
    name = p.str('display_name')
    p.finish()
    if name is not None:
        meter.display_name = name
        meter.updated = wall()
    return meter._export()


def _meter_status(id, status):
    meter = Meter.get(id, kind='billing.meter')
    if status == 'active' and meter.status != 'active' and active_meter(meter.event_name):
        raise invalid(f'An active meter with event_name `{meter.event_name}` already exists.')
    meter.status = status
    meter.deactivated_at = wall() if status == 'inactive' else None
    meter.updated = wall()
    return meter._export()


@route('POST', '/v1/billing/meters/{id}/deactivate')
def meters_deactivate(p, id):
    p.finish()
    return _meter_status(id, 'inactive')


@route('POST', '/v1/billing/meters/{id}/reactivate')
def meters_reactivate(p, id):
    p.finish()
    return _meter_status(id, 'active')


@route('GET', '/v1/billing/meters')
def meters_list(p):
    items = newest_first(objects('billing.meter'))
    status = p.str('status', choices=('active', 'inactive'))
    if status is not None:
        items = [m for m in items if m.status == status]
    result = export_list(p, items, '/v1/billing/meters', 'billing.meter')
    p.finish()
    return result


def customer_clock(customer_id):
    """The time a customer's usage is judged by: its subscriptions' clock (the emulator's stand-in
    for a test clock, which stays with the customer after a cancellation), else the wall clock."""
    subs = [s for s in objects('subscription') if s.customer == customer_id]
    return max((s._now() for s in subs), default=wall())


def meter_value(text):
    """A payload value: a non-negative decimal number (Stripe sends and returns it as a string)."""
    if not isinstance(text, str) or not re.fullmatch(r'\d+(\.\d+)?', text):
        return None
    return Fraction(text)


@route('POST', '/v1/billing/meter_events')
def meter_events_create(p):
    event_name = p.str('event_name', required=True)
    payload = p.raw('payload')
    identifier = p.str('identifier')
    timestamp = p.ts('timestamp')
    p.finish()
    if payload is None:
        raise missing_param('payload')
    if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
        raise invalid('Invalid payload: a map of strings', param='payload')
    for key, param in ((event_name, 'event_name'), (identifier, 'identifier')):
        if key is not None and len(key) > 100:
            raise invalid(f'Invalid {param}: must be at most 100 characters', param=param)
    meter = active_meter(event_name)
    customer = payload.get(meter.customer_key if meter else 'stripe_customer_id')
    now = customer_clock(customer) if isinstance(customer, str) else wall()
    if timestamp is None:
        timestamp = now
    elif not now - 35 * 86400 <= timestamp <= now + 300:
        raise invalid('Invalid timestamp: must be within the past 35 calendar days or up to 5 '
                      'minutes in the future.', param='timestamp')
    seen = wall()
    for k in [k for k, t in METER_IDENTIFIERS.items() if t <= seen - IDENTIFIER_WINDOW]:
        del METER_IDENTIFIERS[k]
    if identifier is None:
        identifier = new_id('', 32)
    elif identifier in METER_IDENTIFIERS:
        raise invalid(f'An event already exists with identifier {identifier}.')
    METER_IDENTIFIERS[identifier] = seen
    event = {'object': 'billing.meter_event', 'created': seen, 'event_name': event_name,
             'identifier': identifier, 'livemode': False, 'payload': dict(payload),
             'timestamp': timestamp}
    # Stripe validates the rest asynchronously: the call succeeds, the event is not aggregated
    # and the error is reported later (billing.meter.error_report_triggered); /_test/meter_errors
    # lists them here.
    error = None
    value = meter_value(payload.get(meter.value_key)) if meter else None
    if meter is None:
        error = 'no_meter'
    elif not isinstance(customer, str) or store.get(f'customer:{customer}') is None:
        error = 'meter_event_customer_not_found'
    elif meter.formula != 'count' and meter.value_key not in payload:
        error = 'meter_event_value_not_found'
    elif meter.formula != 'count' and value is None:
        error = 'meter_event_invalid_value'
    if error is None:
        METER_EVENTS.append(dict(event, _meter=meter.id, _customer=customer,
                                 _value=value if value is not None else Fraction(1),
                                 _arrived=time.time()))
    else:
        METER_ERRORS.append(dict(event, error=error))
    return event


def meter_aggregate(meter, customer, start, end):
    """The meter's aggregate of a customer's events with start <= timestamp < end."""
    events = [e for e in METER_EVENTS
              if e['_meter'] == meter.id and e['_customer'] == customer
              and start <= e['timestamp'] < end]
    if meter.formula == 'count':
        return Fraction(len(events))
    if meter.formula == 'last':
        return max(events, key=lambda e: (e['timestamp'], e['created']))['_value'] if events \
            else Fraction(0)
    return sum((e['_value'] for e in events), Fraction(0))


@route('GET', '/v1/billing/meters/{id}/event_summaries')
def meter_event_summaries(p, id):
    meter = Meter.get(id, kind='billing.meter')
    customer = p.str('customer', required=True)
    start = p.ts('start_time', required=True)
    end = p.ts('end_time', required=True)
    window = p.str('value_grouping_window', choices=('day', 'hour'))
    limit = p.int('limit', default=10)
    p.ignore('starting_after', 'ending_before')
    p.finish()
    if not 1 <= limit <= 100:
        raise invalid('Invalid limit: must be between 1 and 100', param='limit')
    step = {'day': 86400, 'hour': 3600, None: 60}[window]
    for name, t in (('start_time', start), ('end_time', end)):
        if t % step:
            raise invalid(f'Invalid {name}: must be aligned with '
                          f'{window or "minute"} boundaries', param=name)
    if end <= start:
        raise invalid('Invalid end_time: must be after start_time', param='end_time')
    Customer.get(customer, param='customer', status=400)
    bounds = [(start, end)] if window is None else \
        [(t, min(t + step, end)) for t in range(start, end, step)]
    data = [{'id': 'mtrusg_' + hashlib.sha256(f'{meter.id}{customer}{a}{b}'.encode())
             .hexdigest()[:24], 'object': 'billing.meter_event_summary',
             'aggregated_value': float(meter_aggregate(meter, customer, a, b)),
             'end_time': b, 'livemode': False, 'meter': meter.id, 'start_time': a}
            for a, b in reversed(bounds)]
    return list_object(f'/v1/billing/meters/{meter.id}/event_summaries', data[:limit],
                       len(data) > limit)


# --- customers --------------------------------------------------------------------------------

def _customer_fields(p):
    f = {}
    for k in ('email', 'name', 'description', 'phone'):
        if k in p:
            f[k] = p.str(k) or None
    if 'address' in p:
        f['address'] = parse_address(p, 'address') if p.raw('address') != '' else None
    if 'preferred_locales' in p:
        f['preferred_locales'] = p.strs('preferred_locales') or []
    if 'tax_exempt' in p:
        f['tax_exempt'] = p.str('tax_exempt', choices=('none', 'exempt', 'reverse'))
    if 'balance' in p:
        f['balance'] = p.int('balance')
    return f


def _invoice_settings_pm(p):
    """invoice_settings[default_payment_method]: an id, '' to unset, or absent (None)."""
    s = p.sub('invoice_settings')
    if s is None:
        return None
    pm = s.raw('default_payment_method')
    s.ignore('custom_fields', 'footer', 'rendering_options')
    return pm


@route('POST', '/v1/customers')
def customers_create(p):
    fields = _customer_fields(p)
    metadata = p.metadata()
    pm_id = p.str('payment_method')
    default_pm = _invoice_settings_pm(p)
    unsupported_params(p, 'source', 'shipping', 'test_clock', 'tax_id_data', 'cash_balance',
                       'coupon', 'promotion_code')
    p.ignore('invoice_prefix', 'next_invoice_sequence', 'tax', 'validate')
    p.finish()
    pm = resolve_payment_method(pm_id, 'payment_method') if pm_id else None
    if pm is not None and pm.customer is not None:
        raise invalid('The payment method you provided has already been attached to a '
                      'customer.', param='payment_method')
    if default_pm and (pm is None or default_pm != pm.id):
        raise invalid(f'The customer does not have a payment method with the ID {default_pm}. '
                      'The payment method must be attached to the customer.',
                      param='invoice_settings[default_payment_method]', code='resource_missing')
    if pm is not None and pm._decline('attach'):
        raise card_error(*pm._decline('attach'))
    cust = Customer(metadata=metadata, **fields)
    if pm is not None:
        pm.customer = cust.id
    cust.default_payment_method = default_pm or None
    emit('customer.created', cust)
    if pm is not None:
        emit('payment_method.attached', pm)
    return cust._export()


def _search_clauses(query):
    """Stripe's search query language, the subset for customers: `field:'value'` (exact),
    `field~'value'` (substring), `metadata['key']:'value'`, `created>N` (and <, >=, <=), `-`
    negation, clauses joined by AND or by OR (not both)."""
    clause = re.compile(r"""\s*(-?)\s*(metadata\[(['"])(.+?)\3\]|[a-z_]+)\s*(:|~|>=|<=|>|<)\s*"""
                        r"""(?:(['"])(.*?)\6|(-?\d+))\s*""")
    pos, clauses, joins = 0, [], set()
    while True:
        m = clause.match(query, pos)
        if not m:
            raise invalid(f'Invalid search query: {query!r}. See '
                          'https://stripe.com/docs/search#search-query-language', param='query')
        neg, field, _, mkey, op, _, sval, nval = m.groups()
        clauses.append((bool(neg), 'metadata' if mkey else field, mkey, op,
                        sval if sval is not None else nval))
        pos = m.end()
        if pos >= len(query):
            break
        j = re.match(r'(AND|OR)\s+', query[pos:])
        if not j:
            raise invalid(f'Invalid search query: {query!r}.', param='query')
        joins.add(j.group(1))
        pos += j.end()
    if len(joins) > 1:
        raise invalid('You cannot combine AND and OR in the same search query.', param='query')
    return clauses, ('OR' in joins)


def _search_match(cust, clause):
    neg, field, mkey, op, value = clause
    if field == 'created':
        if not re.fullmatch(r'-?\d+', value) or op in (':', '~'):
            raise invalid('created must be compared with >, <, >= or <= to a number',
                          param='query')
        v = int(value)
        ok = {'>': cust.created > v, '<': cust.created < v, '>=': cust.created >= v,
              '<=': cust.created <= v}[op]
        return ok != neg
    if field == 'metadata':
        actual = cust.metadata.get(mkey)
    elif field in ('email', 'name', 'phone', 'description'):
        actual = getattr(cust, field)
    else:
        raise invalid(f'Field `{field}` is an unsupported search field for resource `customers`'
                      '.', param='query')
    if op == '~':
        if len(value) < 3:
            raise invalid('The substring operator ~ requires at least 3 characters.',
                          param='query')
        ok = actual is not None and value.casefold() in actual.casefold()
    elif op == ':':
        ok = actual is not None and actual.casefold() == value.casefold()
    else:
        raise invalid(f'Operator {op} is not supported for `{field}`.', param='query')
    return ok != neg


@route('GET', '/v1/customers/search')
def customers_search(p):
    """A search_result page.  Unlike Stripe, results are visible immediately (Stripe's search
    index lags by up to a minute)."""
    query = p.str('query', required=True)
    limit = p.int('limit', default=10)
    page = p.str('page')
    p.finish()
    if not 1 <= limit <= 100:
        raise invalid('Invalid limit: must be between 1 and 100', param='limit')
    clauses, any_of = _search_clauses(query)
    hits = [c for c in newest_first(objects('customer')) if not c._deleted and
            (any if any_of else all)(_search_match(c, cl) for cl in clauses)]
    offset = 0
    if page:
        m = re.fullmatch(r'page_(\d+)', page)
        if not m:
            raise invalid('Invalid page token.', param='page')
        offset = int(m.group(1))
    data = hits[offset:offset + limit]
    more = len(hits) > offset + limit
    result = {'object': 'search_result', 'data': [c._export() for c in data],
              'has_more': more, 'next_page': f'page_{offset + limit}' if more else None,
              'url': '/v1/customers/search'}
    if 'total_count' in p.expand:
        p.expand.remove('total_count')
        result['total_count'] = len(hits)
    return result


@route('GET', '/v1/customers/{id}')
def customers_retrieve(p, id):
    p.finish()
    cust = store.get(f'customer:{id}')
    if cust is None:
        raise no_such('customer', id)
    if cust._deleted:
        return deleted_object(cust)
    return cust._export()


@route('POST', '/v1/customers/{id}')
def customers_update(p, id):
    cust = Customer.get(id)
    fields = _customer_fields(p)
    metadata = p.metadata()
    default_pm = _invoice_settings_pm(p)
    unsupported_params(p, 'source', 'default_source', 'shipping', 'coupon', 'promotion_code',
                       'cash_balance')
    p.ignore('invoice_prefix', 'next_invoice_sequence', 'tax', 'validate')
    p.finish()
    if default_pm:
        customer_payment_method(cust, default_pm, 'invoice_settings[default_payment_method]')
    before = cust._export()
    for k, v in fields.items():
        setattr(cust, k, v)
    cust.metadata = merge_metadata(cust.metadata, metadata)
    if default_pm is not None:
        cust.default_payment_method = default_pm or None
    emit('customer.updated', cust, before)
    return cust._export()


@route('DELETE', '/v1/customers/{id}')
def customers_delete(p, id):
    p.finish()
    cust = Customer.get(id)
    for sub in objects('subscription'):
        if sub.customer == id and sub.status not in ('canceled', 'incomplete_expired'):
            end_subscription(sub, sub._now())
    cust._deleted = True
    emit('customer.deleted', cust)
    return deleted_object(cust)


@route('GET', '/v1/customers')
def customers_list(p):
    items = [c for c in newest_first(objects('customer')) if not c._deleted]
    items = created_filter(p, items)
    email = p.str('email')
    p.ignore('test_clock')
    if email is not None:
        items = [c for c in items if c.email == email]
    result = export_list(p, items, '/v1/customers', 'customer')
    p.finish()
    return result


@route('GET', '/v1/customers/{id}/payment_methods')
def customers_payment_methods(p, id):
    Customer.get(id)
    p.str('type', choices=('card',))
    p.ignore('allow_redisplay')
    items = [pm for pm in newest_first(objects('payment_method')) if pm.customer == id]
    result = export_list(p, items, f'/v1/customers/{id}/payment_methods', 'payment_method')
    p.finish()
    return result


# --- payment methods --------------------------------------------------------------------------

def _billing_details(p):
    b = p.sub('billing_details')
    if b is None:
        return None
    return {'address': parse_address(b, 'address'), 'email': b.str('email'),
            'name': b.str('name'), 'phone': b.str('phone')}


@route('POST', '/v1/payment_methods')
def payment_methods_create(p):
    type = p.str('type', required=True)
    if type != 'card':
        raise unsupported(f'payment methods of type {type}', param='type')
    c = p.sub('card')
    if c is None:
        raise missing_param('card')
    number, exp_month, exp_year = PaymentMethod.from_card_params(c)
    bd = _billing_details(p)
    metadata = p.metadata()
    redisplay = p.str('allow_redisplay', choices=('always', 'limited', 'unspecified'),
                      default='unspecified')
    unsupported_params(p, 'customer', 'payment_method')
    p.finish()
    return PaymentMethod(number, exp_month, exp_year, bd, metadata, redisplay)._export()


@route('GET', '/v1/payment_methods/{id}')
def payment_methods_retrieve(p, id):
    p.finish()
    return PaymentMethod.get(id, param='payment_method', kind='PaymentMethod')._export()


@route('POST', '/v1/payment_methods/{id}')
def payment_methods_update(p, id):
    pm = PaymentMethod.get(id, param='payment_method', kind='PaymentMethod')
    bd = _billing_details(p)
    metadata = p.metadata()
    redisplay = p.str('allow_redisplay', choices=('always', 'limited', 'unspecified'))
    c = p.sub('card')
    exp = (c.int('exp_month', minimum=1, maximum=12), c.int('exp_year')) if c else (None, None)
    p.finish()
    if pm.customer is None:
        raise invalid('You must save this PaymentMethod to a customer before you can update '
                      'it.')
    before = pm._export()
    if bd is not None:
        pm.billing_details.update({k: v for k, v in bd.items() if v is not None})
    pm.metadata = merge_metadata(pm.metadata, metadata)
    if redisplay:
        pm.allow_redisplay = redisplay
    if exp[0]:
        pm.exp_month = exp[0]
    if exp[1]:
        pm.exp_year = exp[1] + 2000 if exp[1] < 100 else exp[1]
    emit('payment_method.updated', pm, before)
    return pm._export()


@route('POST', '/v1/payment_methods/{id}/attach')
def payment_methods_attach(p, id):
    customer_id = p.str('customer', required=True)
    p.finish()
    if id in TEST_PAYMENT_METHODS:
        pm = resolve_payment_method(id, 'payment_method')
    else:
        pm = PaymentMethod.get(id, param='payment_method', kind='PaymentMethod')
    cust = Customer.get(customer_id, param='customer', status=400)
    attach_payment_method(pm, cust)
    return pm._export()


@route('POST', '/v1/payment_methods/{id}/detach')
def payment_methods_detach(p, id):
    p.finish()
    pm = PaymentMethod.get(id, param='payment_method', kind='PaymentMethod')
    if pm.customer is None:
        raise invalid('The payment method you provided is not attached to a customer so '
                      'detachment is impossible.', param='payment_method',
                      code='payment_method_unexpected_state')
    cust = store.get(f'customer:{pm.customer}')
    before = cust._export() if cust else None
    pm.customer = None
    pm._detached = True
    emit('payment_method.detached', pm)
    if cust is not None and cust.default_payment_method == pm.id:
        cust.default_payment_method = None
        emit('customer.updated', cust, before)
    for sub in objects('subscription'):
        if sub.default_payment_method == pm.id:
            b = sub._export()
            sub.default_payment_method = None
            emit('customer.subscription.updated', sub, b)
    return pm._export()


@route('GET', '/v1/payment_methods')
def payment_methods_list(p):
    customer = p.str('customer')
    p.str('type', choices=('card',))
    p.ignore('allow_redisplay')
    items = newest_first(objects('payment_method'))
    if customer is not None:
        Customer.get(customer, param='customer', status=400)
        items = [pm for pm in items if pm.customer == customer]
    result = export_list(p, items, '/v1/payment_methods', 'payment_method')
    p.finish()
    return result


# --- setup intents ----------------------------------------------------------------------------

@route('POST', '/v1/setup_intents')
def setup_intents_create(p):
    customer = p.str('customer')
    usage = p.str('usage', default='off_session', choices=('off_session', 'on_session'))
    types = p.strs('payment_method_types')
    pm_id = p.str('payment_method')
    confirm = p.bool('confirm', default=False)
    metadata = p.metadata()
    description = p.str('description')
    apm = p.sub('automatic_payment_methods')
    automatic = None
    if apm is not None:
        automatic = {'allow_redirects': apm.str('allow_redirects', default='always',
                                                choices=('always', 'never')),
                     'enabled': apm.bool('enabled', default=False)}
    p.ignore('return_url', 'payment_method_options', 'attach_to_self', 'flow_directions',
             'use_stripe_sdk', 'mandate_data', 'excluded_payment_method_types')
    unsupported_params(p, 'on_behalf_of', 'payment_method_data', 'single_use')
    p.finish()
    if types and any(t != 'card' for t in types):
        raise unsupported('payment method types other than card', param='payment_method_types')
    if customer is not None:
        Customer.get(customer, param='customer', status=400)
    if pm_id is not None and pm_id not in TEST_PAYMENT_METHODS:
        PaymentMethod.get(pm_id, param='payment_method', status=400, kind='PaymentMethod')
    si = SetupIntent(customer, usage, types, pm_id if pm_id not in TEST_PAYMENT_METHODS
                     else resolve_payment_method(pm_id, 'payment_method').id, metadata,
                     description, automatic)
    emit('setup_intent.created', si)
    if confirm:
        si._confirm()
    return si._export()


@route('GET', '/v1/setup_intents/{id}')
def setup_intents_retrieve(p, id):
    p.ignore('client_secret')
    p.finish()
    return SetupIntent.get(id, kind='setupintent')._export()


@route('POST', '/v1/setup_intents/{id}')
def setup_intents_update(p, id):
    si = SetupIntent.get(id, kind='setupintent')
    metadata = p.metadata()
    description = p.raw('description')
    customer = p.str('customer')
    pm_id = p.str('payment_method')
    p.ignore('payment_method_types', 'payment_method_options', 'attach_to_self',
             'flow_directions')
    p.finish()
    if si.status in ('succeeded', 'canceled'):
        raise invalid(f'This SetupIntent has a status of {si.status} and cannot be updated.',
                      code='setup_intent_unexpected_state')
    if customer is not None:
        Customer.get(customer, param='customer', status=400)
        si.customer = customer
    if pm_id is not None:
        si.payment_method = resolve_payment_method(pm_id, 'payment_method').id
        si.status = 'requires_confirmation'
    if description is not None:
        si.description = description or None
    si.metadata = merge_metadata(si.metadata, metadata)
    return si._export()


@route('POST', '/v1/setup_intents/{id}/confirm')
def setup_intents_confirm(p, id):
    si = SetupIntent.get(id, kind='setupintent')
    pm_id = p.str('payment_method')
    p.ignore('return_url', 'client_secret', 'use_stripe_sdk', 'mandate_data',
             'payment_method_options')
    unsupported_params(p, 'payment_method_data')
    p.finish()
    si._confirm(pm_id)
    return si._export()


@route('POST', '/v1/setup_intents/{id}/cancel')
def setup_intents_cancel(p, id):
    si = SetupIntent.get(id, kind='setupintent')
    reason = p.str('cancellation_reason',
                   choices=('abandoned', 'duplicate', 'requested_by_customer'))
    p.finish()
    if si.status in ('succeeded', 'canceled', 'processing'):
        raise invalid(f'You cannot cancel this SetupIntent because it has a status of '
                      f'{si.status}.', code='setup_intent_unexpected_state')
    si.status = 'canceled'
    si.cancellation_reason = reason
    emit('setup_intent.canceled', si)
    return si._export()


@route('GET', '/v1/setup_intents')
def setup_intents_list(p):
    customer = p.str('customer')
    pm = p.str('payment_method')
    p.ignore('attach_to_self')
    items = created_filter(p, newest_first(objects('setup_intent')))
    if customer is not None:
        items = [s for s in items if s.customer == customer]
    if pm is not None:
        items = [s for s in items if s.payment_method == pm]
    result = export_list(p, items, '/v1/setup_intents', 'setupintent')
    p.finish()
    return result


# --- subscriptions ----------------------------------------------------------------------------

PRORATION_BEHAVIORS = ('always_invoice', 'create_prorations', 'none')
PAYMENT_BEHAVIORS = ('allow_incomplete', 'default_incomplete', 'error_if_incomplete',
                     'pending_if_incomplete')
SUBSCRIPTION_UNSUPPORTED = (
    'add_invoice_items', 'application_fee_percent', 'billing_cycle_anchor_config',
    'billing_thresholds', 'coupon', 'days_until_due', 'default_source', 'default_tax_rates',
    'discounts', 'invoice_settings', 'on_behalf_of', 'pause_collection',
    'pending_invoice_item_interval', 'promotion_code', 'transfer_data', 'backdate_start_date')


@route('POST', '/v1/subscriptions')
def subscriptions_create(p):
    cust = Customer.get(p.str('customer', required=True), param='customer', status=400)
    specs = parse_item_specs(p.subs('items'))
    trial_days = p.int('trial_period_days', minimum=0, maximum=730)
    trial_end = p.ts('trial_end', allow_now=True)
    if p.bool('trial_from_plan'):
        raise unsupported('trial_from_plan', param='trial_from_plan')
    missing_pm = 'create_invoice'
    ts = p.sub('trial_settings')
    if ts is not None:
        eb = ts.sub('end_behavior')
        if eb is not None:
            missing_pm = eb.str('missing_payment_method', default=missing_pm,
                                choices=('cancel', 'create_invoice', 'pause'))
    payment_behavior = p.str('payment_behavior', default='allow_incomplete',
                             choices=PAYMENT_BEHAVIORS)
    metadata = p.metadata()
    description = p.str('description')
    default_pm = p.str('default_payment_method')
    cancel_at_period_end = p.bool('cancel_at_period_end', default=False)
    p.str('collection_method', choices=('charge_automatically',))
    save_default = 'off'
    ps = p.sub('payment_settings')
    if ps is not None:
        save_default = ps.str('save_default_payment_method', default='off',
                              choices=('off', 'on_subscription'))
        ps.ignore('payment_method_types', 'payment_method_options')
    billing_mode = 'flexible'
    bm = p.sub('billing_mode')
    if bm is not None:
        billing_mode = bm.str('type', default='flexible', choices=('classic', 'flexible'))
        bm.ignore('flexible')
    at = p.sub('automatic_tax')
    if at is not None and at.bool('enabled'):
        raise unsupported('automatic tax', param='automatic_tax[enabled]')
    if at is not None:
        at.ignore('liability')
    p.str('billing_cycle_anchor', choices=())  # timestamps are not supported
    p.ignore('off_session', 'proration_behavior', 'currency')
    unsupported_params(p, 'cancel_at', *SUBSCRIPTION_UNSUPPORTED)
    p.finish()
    if payment_behavior == 'pending_if_incomplete':
        raise invalid('You can only pass payment_behavior=pending_if_incomplete when updating '
                      'a subscription.', param='payment_behavior')
    if trial_days is not None and trial_end is not None:
        raise invalid('You cannot set both trial_end and trial_period_days.',
                      param='trial_period_days')
    if trial_end == 'now':
        trial_end = None
    now = wall()
    if trial_days:
        trial_end = now + trial_days * 86400
    elif trial_end is not None and trial_end <= now:
        raise invalid('Invalid timestamp: must be in the future', param='trial_end')
    if default_pm:
        customer_payment_method(cust, default_pm, 'default_payment_method')
    return create_subscription(cust, specs, trial_end, metadata, description, default_pm,
                               payment_behavior, missing_pm, save_default, billing_mode,
                               cancel_at_period_end)._export()


@route('GET', '/v1/subscriptions/{id}')
def subscriptions_retrieve(p, id):
    p.finish()
    return Subscription.get(id)._export()


def parse_subscription_update(p):
    """The parameters of POST /v1/subscriptions/{id}, as a dict of the ones given."""
    u = {}
    if 'items' in p:
        u['items'] = parse_item_specs(p.subs('items'))
    if 'metadata' in p:
        u['metadata'] = p.metadata()
    if 'description' in p:
        u['description'] = p.str('description')
    if 'default_payment_method' in p:
        u['default_payment_method'] = p.str('default_payment_method')
    u['cancel_at_period_end'] = p.bool('cancel_at_period_end')
    if 'cancel_at' in p:
        u['cancel_at'] = p.ts('cancel_at') if p.raw('cancel_at') != '' else None
    u['trial_end'] = p.ts('trial_end', allow_now=True)
    u['proration_behavior'] = p.str('proration_behavior', choices=PRORATION_BEHAVIORS)
    u['proration_date'] = p.ts('proration_date')
    u['payment_behavior'] = p.str('payment_behavior', choices=PAYMENT_BEHAVIORS)
    cd = p.sub('cancellation_details')
    if cd is not None:
        u['cancellation_details'] = {
            'comment': cd.str('comment') or None,
            'feedback': cd.str('feedback', choices=(
                '', 'customer_service', 'low_quality', 'missing_features', 'other',
                'switched_service', 'too_complex', 'too_expensive', 'unused')) or None}
    ps = p.sub('payment_settings')
    if ps is not None:
        u['save_default_payment_method'] = ps.str('save_default_payment_method',
                                                  choices=('off', 'on_subscription'))
        ps.ignore('payment_method_types', 'payment_method_options')
    if p.str('billing_cycle_anchor', choices=('now', 'unchanged')) == 'now':
        raise unsupported('billing_cycle_anchor=now', param='billing_cycle_anchor')
    p.ignore('off_session', 'collection_method', 'trial_from_plan')
    unsupported_params(p, *SUBSCRIPTION_UNSUPPORTED)
    p.finish()
    return {k: v for k, v in u.items() if v is not None or k in ('cancel_at', 'description',
                                                                 'default_payment_method')}


@route('POST', '/v1/subscriptions/{id}')
def subscriptions_update(p, id):
    sub = Subscription.get(id)
    u = parse_subscription_update(p)
    save = u.pop('save_default_payment_method', None)
    update_subscription(sub, u)
    if save:
        sub._save_default_payment_method = save
    return sub._export()


@route('DELETE', '/v1/subscriptions/{id}')
def subscriptions_cancel(p, id):
    sub = Subscription.get(id)
    if p.bool('invoice_now') or p.bool('prorate'):
        raise unsupported('invoice_now/prorate on cancellation', param='prorate')
    cd = p.sub('cancellation_details')
    details = None
    if cd is not None:
        details = {'comment': cd.str('comment') or None, 'feedback': cd.str('feedback') or None}
    p.finish()
    if sub.status in ('canceled', 'incomplete_expired'):
        raise no_such('subscription', id)
    if details:
        sub.cancellation_details.update(details)
    end_subscription(sub, sub._now(), reason='cancellation_requested')
    return sub._export()


@route('GET', '/v1/subscriptions')
def subscriptions_list(p):
    items = created_filter(p, newest_first(objects('subscription')))
    customer = p.str('customer')
    price = p.str('price')
    status = p.str('status', choices=('active', 'all', 'canceled', 'ended', 'incomplete',
                                      'incomplete_expired', 'past_due', 'paused', 'trialing',
                                      'unpaid'))
    p.ignore('collection_method', 'test_clock', 'automatic_tax', 'current_period_end',
             'current_period_start')
    if customer is not None:
        items = [s for s in items if s.customer == customer]
    if price is not None:
        items = [s for s in items if any(i.price == price for i in s._items)]
    if status is None:
        items = [s for s in items if s.status not in ('canceled', 'incomplete_expired')]
    elif status == 'ended':
        items = [s for s in items if s.status in ('canceled', 'incomplete_expired')]
    elif status != 'all':
        items = [s for s in items if s.status == status]
    result = export_list(p, items, '/v1/subscriptions', 'subscription')
    p.finish()
    return result


# --- subscription items -----------------------------------------------------------------------

@route('GET', '/v1/subscription_items')
def subscription_items_list(p):
    sub = Subscription.get(p.str('subscription', required=True), param='subscription',
                           status=400)
    result = export_list(p, sub._items, f'/v1/subscription_items?subscription={sub.id}',
                         'subscription item')
    p.finish()
    return result


@route('GET', '/v1/subscription_items/{id}')
def subscription_items_retrieve(p, id):
    p.finish()
    return SubscriptionItem.get(id, kind='subscription item')._export()


def _item_update(p, id, deleted):
    item = SubscriptionItem.get(id, kind='subscription item')
    sub = Subscription.get(item.subscription)
    spec = {'id': id, 'price': None if deleted else (p.str('price') or p.str('plan')),
            'quantity': None if deleted else p.int('quantity', minimum=1),
            'deleted': deleted, 'metadata': None if deleted else p.metadata(),
            'param': 'price', 'id_param': 'id'}
    if not deleted and p.raw('price_data') is not None:
        raise unsupported('price_data', param='price_data')
    u = {'items': [spec],
         'proration_behavior': p.str('proration_behavior', choices=PRORATION_BEHAVIORS),
         'proration_date': p.ts('proration_date'),
         'payment_behavior': p.str('payment_behavior', choices=PAYMENT_BEHAVIORS)}
    p.ignore('off_session', 'tax_rates', 'discounts', 'clear_usage')
    p.finish()
    if u['payment_behavior'] == 'pending_if_incomplete':
        raise unsupported('payment_behavior=pending_if_incomplete', param='payment_behavior')
    update_subscription(sub, {k: v for k, v in u.items() if v is not None})
    return item


@route('POST', '/v1/subscription_items/{id}')
def subscription_items_update(p, id):
    return _item_update(p, id, deleted=False)._export()


@route('DELETE', '/v1/subscription_items/{id}')
def subscription_items_delete(p, id):
    return deleted_object(_item_update(p, id, deleted=True))


# --- invoices ---------------------------------------------------------------------------------

@route('POST', '/v1/invoices/create_preview')
def invoices_create_preview(p):
    customer_id = p.str('customer')
    sub_id = p.str('subscription')
    sd = p.sub('subscription_details')
    specs, behavior, proration_date, cancel = [], 'create_prorations', None, None
    if sd is not None:
        specs = parse_item_specs(sd.subs('items'))
        behavior = sd.str('proration_behavior', default=behavior, choices=PRORATION_BEHAVIORS)
        proration_date = sd.ts('proration_date')
        cancel = sd.bool('cancel_at_period_end')
        if sd.str('billing_cycle_anchor', choices=('now', 'unchanged')) == 'now':
            raise unsupported('billing_cycle_anchor=now',
                              param='subscription_details[billing_cycle_anchor]')
        unsupported_params(sd, 'trial_end', 'cancel_at', 'cancel_now', 'default_tax_rates',
                           'resume_at', 'start_date', 'billing_mode')
    preview_mode = p.str('preview_mode', default='next', choices=('next', 'recurring'))
    unsupported_params(p, 'schedule', 'schedule_details', 'discounts', 'invoice_items',
                       'customer_details', 'automatic_tax', 'on_behalf_of', 'issuer')
    p.ignore('currency')
    p.finish()
    sub = Subscription.get(sub_id, param='subscription', status=400) if sub_id else None
    if customer_id is None and sub is None:
        raise missing_param('customer')
    cust = Customer.get(customer_id or sub.customer, param='customer', status=400)
    if sub is not None and sub.customer != cust.id:
        raise invalid(f'The subscription {sub.id} does not belong to the customer {cust.id}.',
                      param='subscription')
    return preview_invoice(cust, sub, specs, behavior, proration_date, preview_mode,
                           cancel)._export()


@route('GET', '/v1/invoices/upcoming')
def invoices_upcoming(p):
    raise invalid('The upcoming invoice endpoint was removed in API version 2025-03-31.basil; '
                  'use POST /v1/invoices/create_preview.', status=404)


@route('GET', '/v1/invoices/{id}')
def invoices_retrieve(p, id):
    p.finish()
    return Invoice.get(id)._export()


@route('GET', '/v1/invoices')
def invoices_list(p):
    items = created_filter(p, newest_first(objects('invoice')))
    customer = p.str('customer')
    sub = p.str('subscription')
    status = p.str('status', choices=('draft', 'open', 'paid', 'uncollectible', 'void'))
    p.str('collection_method', choices=('charge_automatically', 'send_invoice'))
    p.ignore('due_date')
    if customer is not None:
        items = [i for i in items if i.customer == customer]
    if sub is not None:
        items = [i for i in items if i.subscription == sub]
    if status is not None:
        items = [i for i in items if i.status == status]
    result = export_list(p, items, '/v1/invoices', 'invoice')
    p.finish()
    return result


@route('GET', '/v1/invoices/{id}/lines')
def invoices_lines(p, id):
    inv = Invoice.get(id)
    result = export_list(p, inv.lines, f'/v1/invoices/{id}/lines', 'invoice line item')
    p.finish()
    return result


@route('POST', '/v1/invoices/{id}/pay')
def invoices_pay(p, id):
    """Pay an open invoice now (the customer fixed their card): with the default payment method
    or `payment_method`; 402 card_error when declined."""
    inv = Invoice.get(id)
    pm_id = p.str('payment_method')
    out_of_band = p.bool('paid_out_of_band', default=False)
    p.ignore('off_session', 'forgive', 'source', 'mandate')
    p.finish()
    if inv.status == 'paid':
        raise invalid('Invoice is already paid')
    if inv.status not in ('draft', 'open'):
        raise invalid(f'You cannot pay this invoice because it has a status of {inv.status}.',
                      code='invoice_not_editable')
    cust = Customer.get(inv.customer)
    pm = customer_payment_method(cust, pm_id, 'payment_method') if pm_id else None
    if inv.status == 'draft':
        finalize_invoice(inv)
    if inv.status == 'open':
        if out_of_band:
            mark_invoice_paid(inv)
        else:
            err = attempt_payment(inv, pm)
            if err is not None:
                raise err
    return inv._export()


@route('POST', '/v1/invoices/{id}/void')
def invoices_void(p, id):
    inv = Invoice.get(id)
    p.finish()
    if inv.status != 'open':
        raise invalid(f'You can only void open invoices; this one is {inv.status}.',
                      code='invoice_not_editable')
    before = inv._export()
    inv.status = 'void'
    inv.auto_advance = False
    inv.next_payment_attempt = None
    inv.status_transitions['voided_at'] = inv._clock()
    emit('invoice.voided', inv)
    emit('invoice.updated', inv, before)
    return inv._export()


@route('GET', '/v1/invoiceitems')
def invoice_items_list(p):
    items = newest_first(objects('invoiceitem'))
    customer = p.str('customer')
    invoice = p.str('invoice')
    pending = p.bool('pending')
    if customer is not None:
        items = [i for i in items if i.customer == customer]
    if invoice is not None:
        items = [i for i in items if i.invoice == invoice]
    if pending is not None:
        items = [i for i in items if (i.invoice is None) == pending]
    result = export_list(p, items, '/v1/invoiceitems', 'invoiceitem')
    p.finish()
    return result


@route('GET', '/v1/invoiceitems/{id}')
def invoice_items_retrieve(p, id):
    p.finish()
    return InvoiceItem.get(id)._export()


# --- subscription schedules -------------------------------------------------------------------

@route('POST', '/v1/subscription_schedules')
def schedules_create(p):
    sub_id = p.str('from_subscription')
    metadata = p.metadata()
    unsupported_params(p, 'customer', 'phases', 'start_date', 'end_behavior',
                       'default_settings', 'billing_mode', 'customer_account')
    p.finish()
    if sub_id is None:
        raise unsupported('schedules that are not created from_subscription',
                          param='from_subscription')
    sub = Subscription.get(sub_id, param='from_subscription', status=400)
    if sub.schedule:
        raise invalid('You cannot migrate a subscription that is already attached to a '
                      f'schedule: `{sub.schedule}`.', param='from_subscription')
    if sub.status in ('canceled', 'incomplete_expired'):
        raise invalid('You cannot create a subscription schedule from a canceled '
                      'subscription.', param='from_subscription')
    start, end = sub._period()
    sched = SubscriptionSchedule(sub, sub._now())
    sched.metadata = metadata or {}
    sched.phases = [{'start_date': start, 'end_date': end,
                     'items': [{'price': i.price, 'quantity': i.quantity,
                                'metadata': dict(i.metadata)} for i in sub._items],
                     'proration_behavior': 'create_prorations', 'metadata': {},
                     'trial_end': sub.trial_end if sub.status == 'trialing' else None}]
    before = sub._export()
    sub.schedule = sched.id
    emit('subscription_schedule.created', sched)
    emit('customer.subscription.updated', sub, before)
    return sched._export()


@route('GET', '/v1/subscription_schedules/{id}')
def schedules_retrieve(p, id):
    p.finish()
    return SubscriptionSchedule.get(id, kind='subscription schedule')._export()


def parse_phases(sched, sub, phases):
    """phases[n][items][m][price|quantity|metadata], phases[n][start_date|end_date],
    phases[n][duration][interval|interval_count], phases[n][iterations],
    phases[n][proration_behavior], phases[n][metadata] -> phase dicts.  Each phase starts where
    the previous one ends; the first may be a past phase (Stripe lets past phases be omitted or
    sent again), and the phase in force now must keep its start date."""
    result, prev_end = [], None
    interval = sub._interval()
    current = sched._current_phase() or sched.phases[0]
    for n, ph in enumerate(phases):
        item_params = ph.subs('items')
        if not item_params:
            raise missing_param(ph.name('items'))
        items = []
        for ip in item_params:
            if ip.raw('price_data') is not None:
                raise unsupported('price_data', param=ip.name('price_data'))
            price_id = ip.str('price') or ip.str('plan')
            if not price_id:
                raise missing_param(ip.name('price'))
            price = subscription_price(price_id, ip.name('price'), sub.currency, interval)
            items.append({'price': price.id,
                          'quantity': item_quantity(price, ip.int('quantity', minimum=1),
                                                    ip.name('quantity')),
                          'metadata': ip.metadata() or {}})
            ip.ignore('tax_rates', 'discounts', 'billing_thresholds')
        start = ph.ts('start_date', allow_now=True)
        end = ph.ts('end_date', allow_now=True)
        duration = ph.sub('duration')
        iterations = ph.int('iterations', minimum=1)
        proration = ph.str('proration_behavior', default='create_prorations',
                           choices=PRORATION_BEHAVIORS)
        metadata = ph.metadata() or {}
        trial_end = ph.ts('trial_end')
        ph.ignore('billing_cycle_anchor', 'description', 'currency', 'collection_method',
                  'invoice_settings', 'automatic_tax', 'default_payment_method')
        unsupported_params(ph, 'add_invoice_items', 'coupon', 'discounts', 'trial',
                           'default_tax_rates', 'transfer_data', 'on_behalf_of',
                           'application_fee_percent', 'billing_thresholds', 'pause_collection')
        now = sub._now()
        start = now if start == 'now' else start
        end = now if end == 'now' else end
        if n == 0:
            if start is None:
                start = current['start_date']
            elif start > current['start_date']:
                raise invalid('You can not modify the start date of the current phase.',
                              param=ph.name('start_date'))
        else:
            if start is not None and start != prev_end:
                raise invalid('The start_date of a phase must equal the end_date of the '
                              'previous phase.', param=ph.name('start_date'))
            start = prev_end
        first = store[f'price:{items[0]["price"]}']
        ends = []
        if end is not None:
            ends.append(end)
        if duration is not None:
            ends.append(add_interval(start, duration.str('interval', required=True,
                                                         choices=('day', 'week', 'month',
                                                                  'year')),
                                     duration.int('interval_count', default=1, minimum=1)))
        if iterations is not None:
            ends.append(add_interval(start, first.interval, first.interval_count * iterations))
        if len(set(ends)) > 1:
            raise invalid('end_date, duration and iterations of a phase must agree; set only '
                          'one of them.', param=ph.name('end_date'))
        if ends:
            end = ends[0]
        elif n < len(phases) - 1:
            raise missing_param(ph.name('end_date'))
        else:  # an open-ended last phase lasts one iteration
            end = add_interval(start, first.interval, first.interval_count)
        if end <= start:
            raise invalid('The end_date of a phase must be after its start_date.',
                          param=ph.name('end_date'))
        if trial_end is not None and trial_end != sub.trial_end:
            raise unsupported('changing a trial through a schedule',
                              param=ph.name('trial_end'))
        result.append({'start_date': start, 'end_date': end, 'items': items,
                       'proration_behavior': proration, 'metadata': metadata,
                       'trial_end': trial_end})
        prev_end = end
    # Past phases may be sent again or omitted; the phase in force now must keep its start.
    now = sub._now()
    in_force = next((ph for ph in result if ph['start_date'] <= now < ph['end_date']), None)
    if in_force is None or in_force['start_date'] != current['start_date']:
        raise invalid('You can not modify the start date of the current phase.',
                      param='phases[0][start_date]')
    _check_past_phases(sched, result, now)
    return result


# --- issue 20 (defect 7): schedules reject what Stripe rejects ---------------------------------
# https://docs.stripe.com/api/subscription_schedules/update: phases that have ended may be omitted
# or sent again unchanged; a phase that ended cannot be changed or added.

def _check_past_phases(sched, result, now):
    stored = {(ph['start_date'], ph['end_date']) for ph in sched.phases}
    for n, ph in enumerate(result):
        if ph['end_date'] <= now and (ph['start_date'], ph['end_date']) not in stored:
            raise invalid('You can not modify or add phases that have already ended.',
                          param=f'phases[{n}][end_date]')


def _phase_keeps_trial(sub, in_force):
    """A schedule's phase in force is what the subscription is: a trialing subscription whose
    phase in force is updated without `trial_end` (or `trial`) stops trialing now, as Stripe ends
    the trial when the phase says there is none."""
    if sub.status == 'trialing' and in_force.get('trial_end') is None:
        change_trial_end(sub, 'now')


@route('POST', '/v1/subscription_schedules/{id}')
def schedules_update(p, id):
    sched = SubscriptionSchedule.get(id, kind='subscription schedule')
    sub = sched._sub()
    if sched.status not in ('active', 'not_started') or sub is None:
        raise invalid(f'You cannot update a subscription schedule that is currently in the '
                      f'`{sched.status}` status.')
    phase_params = p.subs('phases')
    end_behavior = p.str('end_behavior', choices=('release', 'cancel'))
    proration = p.str('proration_behavior', default='create_prorations',
                      choices=PRORATION_BEHAVIORS)
    metadata = p.metadata()
    p.ignore('default_settings')
    phases = parse_phases(sched, sub, phase_params) if phase_params else None
    p.finish()
    before = sched._export()
    if phases is not None:
        now = sub._now()
        in_force = next(ph for ph in phases if ph['start_date'] <= now < ph['end_date'])
        _phase_keeps_trial(sub, in_force)
        current = [(i.price, i.quantity) for i in sub._items]
        wanted = [(it['price'], it['quantity']) for it in in_force['items']]
        if wanted != current:  # the current phase changes now, prorated per proration_behavior
            specs = [{'id': sub._items[k].id if k < len(sub._items) else None,
                      'price': price, 'quantity': qty, 'deleted': False, 'metadata': None,
                      'param': f'phases[0][items][{k}][price]',
                      'id_param': f'phases[0][items][{k}]'}
                     for k, (price, qty) in enumerate(wanted)]
            specs += [{'id': i.id, 'price': None, 'quantity': None, 'deleted': True,
                       'metadata': None, 'param': '', 'id_param': ''}
                      for i in sub._items[len(wanted):]]
            update_subscription(sub, {'items': specs, 'proration_behavior': proration})
        sched.phases = phases
    if end_behavior is not None:
        sched.end_behavior = end_behavior
    sched.metadata = merge_metadata(sched.metadata, metadata)
    emit('subscription_schedule.updated', sched, before)
    return sched._export()


@route('POST', '/v1/subscription_schedules/{id}/release')
def schedules_release(p, id):
    sched = SubscriptionSchedule.get(id, kind='subscription schedule')
    p.ignore('preserve_cancel_date')
    p.finish()
    if sched.status not in ('active', 'not_started'):
        raise invalid(f'You cannot release a subscription schedule that is currently in the '
                      f'`{sched.status}` status.')
    sub = sched._sub()
    before = sub._export()
    sched.status = 'released'
    sched.released_at = sub._now()
    sched.released_subscription = sub.id
    sched.subscription = None
    sub.schedule = None
    emit('subscription_schedule.released', sched)
    emit('customer.subscription.updated', sub, before)
    return sched._export()


@route('POST', '/v1/subscription_schedules/{id}/cancel')
def schedules_cancel(p, id):
    sched = SubscriptionSchedule.get(id, kind='subscription schedule')
    if p.bool('invoice_now') or p.bool('prorate'):
        raise unsupported('invoice_now/prorate on cancellation', param='prorate')
    p.finish()
    if sched.status not in ('active', 'not_started'):
        raise invalid(f'You cannot cancel a subscription schedule that is currently in the '
                      f'`{sched.status}` status.')
    end_subscription(sched._sub(), sched._sub()._now(), reason='cancellation_requested')
    return sched._export()


@route('GET', '/v1/subscription_schedules')
def schedules_list(p):
    items = created_filter(p, newest_first(objects('subscription_schedule')))
    customer = p.str('customer')
    p.ignore('scheduled', 'completed_at', 'released_at', 'canceled_at')
    if customer is not None:
        items = [s for s in items if s.customer == customer]
    result = export_list(p, items, '/v1/subscription_schedules', 'subscription schedule')
    p.finish()
    return result


# --- billing portal, events -------------------------------------------------------------------

@route('POST', '/v1/billing_portal/sessions')
def portal_sessions_create(p):
    cust = Customer.get(p.str('customer', required=True), param='customer', status=400)
    return_url = p.str('return_url')
    configuration = p.str('configuration')
    locale = p.str('locale')
    on_behalf_of = p.str('on_behalf_of')
    unsupported_params(p, 'flow_data')
    p.finish()
    if return_url is not None and not re.match(r'https?://', return_url):
        raise invalid('Not a valid URL', param='return_url', code='url_invalid')
    _known_portal_configuration(configuration)
    return BillingPortalSession(cust.id, return_url, configuration, locale,
                                on_behalf_of)._export()


# --- issue 20 (defect 10): portal configurations -----------------------------------------------
# https://docs.stripe.com/api/customer_portal/sessions/create: `configuration` names a saved
# configuration (bpc_...); an unknown one is 400 resource_missing on that param. The emulator's
# account has one saved configuration, its default (PORTAL_CONFIGURATION).

def _known_portal_configuration(configuration):
    if configuration is not None and configuration != PORTAL_CONFIGURATION:
        raise no_such('configuration', configuration, param='configuration', status=400)


@route('GET', '/v1/events/{id}')
def events_retrieve(p, id):
    p.finish()
    return Event.get(id)._export()


@route('GET', '/v1/events')
def events_list(p):
    items = created_filter(p, newest_first(objects('event')))
    type = p.str('type')
    types = p.strs('types')
    p.ignore('delivery_success')
    if type is not None:
        rx = re.compile('^' + re.escape(type).replace(r'\*', '.*') + '$')
        items = [e for e in items if rx.match(e.type)]
    if types is not None:
        items = [e for e in items if e.type in types]
    result = export_list(p, items, '/v1/events', 'event')
    p.finish()
    return result


# --- issue 20 follow-up (helper D): first invoices that need 3-D Secure; incomplete expiry ------
# https://docs.stripe.com/billing/subscriptions/overview#requires-action: a subscription created
# without a trial (payment_behavior allow_incomplete or default_incomplete) whose first payment
# needs authentication is `incomplete`; its first invoice is open and its PaymentIntent
# `requires_action` (the invoice's `confirmation_secret`,
# https://docs.stripe.com/api/invoices/object#invoice_object-confirmation_secret), and
# `invoice.payment_action_required` is sent.  Confirming it (POST /_test/payment_intents/{id}/confirm,
# standing in for Stripe.js) pays the invoice: the subscription becomes `active`
# (`invoice.paid`, `customer.subscription.updated`).  A declined first payment leaves the
# PaymentIntent `requires_payment_method` (the same secret confirms it with another card).
# https://docs.stripe.com/billing/subscriptions/overview#payment-window: when the first invoice
# is not paid within 23 hours of the subscription's creation, the subscription becomes
# `incomplete_expired` and its open invoice is voided (`invoice.voided`,
# `customer.subscription.updated`).  The 23 hours run on the subscription's clock
# (/_test/subscriptions/{id}/advance_clock and /advance).
# https://docs.stripe.com/api/subscriptions/resume: resuming has no payment_behavior; an unpaid
# resumption invoice makes the subscription `past_due`; its PaymentIntent is handled as above.

INCOMPLETE_PAYMENT_WINDOW = 23 * 3600


def charge_first_invoice(inv, pm=None, attempt=True):
    """Give the open invoice a PaymentIntent and, if `attempt`, charge it: None when paid, else
    the PaymentIntent's status (`requires_action`: 3-D Secure; `requires_payment_method`: declined
    or not attempted)."""
    cust = store[f'customer:{inv.customer}']
    sub = store.get(f'subscription:{inv.subscription}') if inv.subscription else None
    pi_id = new_id('pi_')
    inv._payment_intent = {'id': pi_id, 'client_secret': f'{pi_id}_secret_{new_id("", 24)}',
                           'status': 'requires_payment_method'}
    if not attempt:
        return 'requires_payment_method'
    pm = pm or default_payment_method(sub, cust)
    decline = pm._decline('charge') if pm is not None else None
    if decline is not None and decline[0] == 'authentication_required':
        inv._payment_intent['status'] = 'requires_action'
        inv.attempt_count += 1
        inv.attempted = True
        if inv.billing_reason in DUNNING_REASONS:
            schedule_retry(inv)  # a resumption invoice: Stripe's retries go on (see "Dunning")
        emit('invoice.payment_action_required', inv)
        return 'requires_action'
    if attempt_payment(inv, pm) is None:
        inv._payment_intent['status'] = 'succeeded'
        return None
    return 'requires_payment_method'


def expire_if_unpaid(sub, until):
    """Move an `incomplete` subscription's clock to `until`; once 23 h have passed since its
    creation with its first invoice unpaid, it becomes `incomplete_expired` (the invoice voided)."""
    deadline = sub.created + INCOMPLETE_PAYMENT_WINDOW
    if until < deadline:
        sub._sim_time = max(sub._sim_time, until)
        return
    sub._sim_time = max(sub._sim_time, deadline)
    inv = store.get(f'invoice:{sub.latest_invoice}') if sub.latest_invoice else None
    if inv is not None and inv.status == 'open':
        inv_before = inv._export()
        inv.status = 'void'
        inv.auto_advance = False
        inv.next_payment_attempt = None
        inv.status_transitions['voided_at'] = deadline
        emit('invoice.voided', inv)
        emit('invoice.updated', inv, inv_before)
    before = sub._export()
    sub.status = 'incomplete_expired'
    emit('customer.subscription.updated', sub, before)
    sub._sim_time = max(sub._sim_time, until)


# --- test-only endpoints (never under /v1) -----------------------------------------------------

@route('POST', '/_test/subscriptions/{id}/advance')
def test_advance(p, id):
    """End the trial or renew the current period: the new period is [old end, old end + one
    interval) even when that is ahead of the wall clock (the subscription's clock moves).
    Payment retries due before the period's end run first (dunning); if they end the
    subscription, it is returned as they left it."""
    p.finish()
    sub = Subscription.get(id)
    if sub.status == 'incomplete':  # issue 20 follow-up: its payment window closes first
        expire_if_unpaid(sub, sub._period()[1])
        return sub._export()
    if sub.status not in ('canceled', 'incomplete_expired', 'incomplete', 'paused'):
        finalize_due_drafts(sub, sub._period()[1])
        run_due_retries(sub, sub._period()[1])
        if sub.status in ('canceled', 'paused'):
            return sub._export()
    return renew_subscription(sub)._export()


# issue 20 (defect 6): see 'pending updates and 3-D Secure' above.
@route('POST', '/_test/payment_intents/{id}/confirm')
def test_confirm_payment_intent(p, id):
    """What Stripe.js does with an invoice's confirmation secret once the customer has passed
    3-D Secure: the payment succeeds, the invoice is paid (and its pending update applied).
    `id` is the PaymentIntent id, the part of the client secret before `_secret_`."""
    p.finish()
    inv = next((i for i in objects('invoice')
                if getattr(i, '_payment_intent', None) and i._payment_intent['id'] == id), None)
    if inv is None:
        raise no_such('payment_intent', id)
    if inv.status != 'open' or inv._payment_intent['status'] != 'requires_action':
        raise invalid(f'This PaymentIntent cannot be confirmed in status '
                      f'{inv._payment_intent["status"]}.', code='payment_intent_unexpected_state')
    inv.amount_paid = 0
    mark_invoice_paid(inv)
    return {'id': id, 'object': 'payment_intent', 'status': 'succeeded', 'invoice': inv.id}


@route('POST', '/_test/subscriptions/{id}/trial_will_end')
def test_trial_will_end(p, id):
    """Send customer.subscription.trial_will_end (Stripe sends it three days before the end)."""
    p.finish()
    sub = Subscription.get(id)
    if sub.status != 'trialing':
        raise invalid('The subscription is not trialing.', param='subscription')
    emit('customer.subscription.trial_will_end', sub)
    return sub._export()


# =============================================================================================
# Dunning: automatic payment retries on the subscription's clock, the account's final action,
# and resuming a paused subscription (issue 20).
# Sources: https://docs.stripe.com/billing/revenue-recovery/smart-retries (custom retry
# schedule; subscription status after all retries fail: cancel / mark unpaid / leave past-due),
# https://docs.stripe.com/billing/revenue-recovery/smart-retries/pause-on-payment-failure,
# https://docs.stripe.com/billing/subscriptions/overview#failed-payments,
# https://docs.stripe.com/api/subscriptions/resume
# =============================================================================================

DUNNING_KEY = 'tollgate_account:dunning'
# A custom retry schedule: retries this many days after the first failed attempt, then the final
# action.  Stripe's Dashboard default for new accounts cancels the subscription at the end.
DUNNING_DEFAULT = {'retry_days': [1, 3, 5], 'final_action': 'cancel'}
DUNNING_ACTIONS = ('cancel', 'unpaid', 'past_due', 'pause')
# Invoices Stripe's subscription retry settings apply to (the first invoice of a subscription
# is not retried: the subscription stays `incomplete`).
DUNNING_REASONS = ('subscription_cycle', 'subscription_update')


def dunning_settings():
    return dict(store.get(DUNNING_KEY) or DUNNING_DEFAULT)


def schedule_retry(inv):
    """After a failed automatic attempt: the next retry of the account's schedule
    (`next_payment_attempt`), or None once the schedule is exhausted."""
    if getattr(inv, '_dunning_start', None) is None:
        inv._dunning_start = inv._clock()
        inv._retries_done = 0
    days = dunning_settings()['retry_days']
    n = inv._retries_done
    inv.next_payment_attempt = (inv._dunning_start + days[n] * 86400 if n < len(days)
                                else None)


def final_dunning_action(sub, inv, at):
    """Every retry failed: the account's subscription status setting.  The invoice stays open
    (no more automatic attempts)."""
    inv.auto_advance = False
    action = dunning_settings()['final_action']
    if action == 'pause' and sub.billing_mode != 'flexible':
        action = 'cancel'  # Stripe cancels what it cannot pause after the final attempt
    if action == 'cancel':
        end_subscription(sub, at, reason='payment_failed')
    elif action == 'unpaid':
        before = sub._export()
        sub.status = 'unpaid'
        emit('customer.subscription.updated', sub, before)
    elif action == 'pause':
        before = sub._export()
        sub.status = 'paused'
        emit('customer.subscription.paused', sub)
        emit('customer.subscription.updated', sub, before)


def run_due_retries(sub, until):
    """Move the subscription's clock to `until`, running each automatic retry due before it, in
    order: a paid retry makes the subscription `active` again (`invoice.paid`); a failed one sends
    `invoice.payment_failed`; after the last one the final action applies."""
    while sub.status in ('past_due', 'active'):
        due = [inv for inv in objects('invoice')
               if inv.subscription == sub.id and inv.status == 'open'
               and inv.billing_reason in DUNNING_REASONS
               and inv.next_payment_attempt is not None and inv.next_payment_attempt < until]
        if not due:
            break
        inv = min(due, key=lambda i: (i.next_payment_attempt, i.created))
        at = inv.next_payment_attempt
        sub._sim_time = max(sub._sim_time, at)
        inv._retries_done = getattr(inv, '_retries_done', 0) + 1
        if attempt_payment(inv) is not None and inv.next_payment_attempt is None:
            final_dunning_action(sub, inv, at)
    sub._sim_time = max(sub._sim_time, until)


@route('POST', '/_test/account/dunning')
def test_dunning_settings(p):
    """The account's retry settings (Dashboard > Billing > Revenue recovery > Retries):
    `retry_days[]` (days after the first failure, increasing, 0..60, at most 8) and
    `final_action` (`cancel`, `unpaid`, `past_due`, `pause`).  Returns the settings."""
    days = p.strs('retry_days')
    action = p.str('final_action', choices=DUNNING_ACTIONS)
    p.finish()
    settings = dunning_settings()
    if days is not None:
        try:
            parsed = [int(d) for d in days]
        except ValueError:
            raise invalid('retry_days must be whole days', param='retry_days')
        if len(parsed) > 8 or any(d < 0 or d > 60 for d in parsed) or parsed != sorted(
                set(parsed)):
            raise invalid('retry_days must be increasing days in 0..60, at most 8',
                          param='retry_days')
        settings['retry_days'] = parsed
    if action is not None:
        settings['final_action'] = action
    store[DUNNING_KEY] = settings
    return {'object': 'test_dunning_settings', **settings}


@route('POST', '/_test/subscriptions/{id}/advance_clock')
def test_advance_clock(p, id):
    """Move the subscription's clock forward to `to` (a Unix time before the period's end; use
    /advance to cross it), running the automatic payment retries due meanwhile."""
    to = p.ts('to', required=True)
    p.finish()
    sub = Subscription.get(id)
    if to >= sub._period()[1] and sub.status != 'canceled':
        raise invalid('`to` must be before the end of the current period; use /advance to '
                      'renew.', param='to')
    if to < sub._sim_time:
        raise invalid('The clock cannot go back.', param='to')
    finalize_due_drafts(sub, to)  # a final invoice's grace runs on after a cancellation
    if sub.status in ('past_due', 'active'):
        run_due_retries(sub, to)
    elif sub.status == 'incomplete':  # issue 20 follow-up: the 23 h payment window
        expire_if_unpaid(sub, to)
    else:
        sub._sim_time = to
    return sub._export()


@route('POST', '/v1/subscriptions/{id}/resume')
def subscriptions_resume(p, id):
    """Resume a paused subscription: a new period from now (billing_cycle_anchor=now, the
    default), invoiced and charged at once; paid -> `active`, a failed payment -> `past_due`."""
    anchor = p.str('billing_cycle_anchor', default='now', choices=('now', 'unchanged'))
    p.str('proration_behavior', choices=PRORATION_BEHAVIORS)
    p.ts('proration_date')
    p.finish()
    sub = Subscription.get(id)
    if sub.status != 'paused':
        raise invalid('Only subscriptions with status `paused` can be resumed.',
                      param='subscription')
    if anchor == 'unchanged':
        raise unsupported('billing_cycle_anchor=unchanged on resume',
                          param='billing_cycle_anchor')
    cust = store[f'customer:{sub.customer}']
    before = sub._export()
    now = sub._now()
    interval = sub._interval()
    start = sub._period()[1] if sub._period()[1] <= now else sub._period()[0]
    new_end = add_interval(now, *interval)
    sub.billing_cycle_anchor = sub._anchor = now
    for i in sub._items:
        i.current_period_start, i.current_period_end = now, new_end
    lines = cycle_specs(sub, [(i.id, i.price, i.quantity) for i in sub._items], now, new_end)
    inv = Invoice(cust, sub, 'subscription_update', now, start, now, lines)
    sub.latest_invoice = inv.id
    sub.status = 'active'
    emit('invoice.created', inv)
    finalize_invoice(inv)
    if inv.status == 'open' and charge_first_invoice(inv) is not None:
        sub.status = 'past_due'
    emit('customer.subscription.resumed', sub)
    emit('customer.subscription.updated', sub, before)
    return sub._export()


@route('GET', '/_test/webhook_deliveries')
def test_deliveries(p):
    """Every delivery attempt (event, type, endpoint, url, attempt, status), and the ids of
    events still waiting."""
    p.finish()
    return {'deliveries': list(DELIVERIES), 'pending': undelivered()}


# --- pages and control endpoints that are not JSON API calls ----------------------------------

def _page(title, body):
    return web.Response(text=f'<!doctype html><html><head><meta charset="utf-8"><title>'
                             f'{html.escape(title)}</title></head><body><h1>'
                             f'{html.escape(title)}</h1>{body}</body></html>',
                        content_type='text/html')


async def hosted_invoice_page(request):
    """GET /_test/hosted/{id}: stands in for Stripe's hosted invoice page."""
    inv = store.get(f'invoice:{request.match_info["id"]}')
    if inv is None or inv.status == 'draft':
        raise no_such('invoice', request.match_info['id'])
    rows = ''.join(f'<tr><td>{html.escape(line.spec["description"])}</td>'
                   f'<td>{money(line.amount, inv.currency)}</td></tr>' for line in inv.lines)
    return _page(f'Invoice {inv.number}',
                 f'<p id="status">{inv.status}</p><table>{rows}</table>'
                 f'<p>Amount due: <span id="amount_due">'
                 f'{money(inv.amount_due, inv.currency)}</span></p>')


async def portal_page(request):
    """GET /_test/portal/{id}: stands in for the Stripe customer portal."""
    s = store.get(f'billing_portal.session:{request.match_info["id"]}')
    if s is None:
        raise no_such('billing portal session', request.match_info['id'])
    subs = ''.join(f'<li>{sub.id}: {sub.status}</li>' for sub in objects('subscription')
                   if sub.customer == s.customer)
    back = (f'<a id="return" href="{html.escape(s.return_url)}">Return</a>'
            if s.return_url else '')
    config = f'<p id="configuration">{html.escape(s.configuration)}</p>'
    return _page(f'Customer portal for {s.customer}', f'{config}<ul>{subs}</ul>{back}')


async def drain_webhooks(request):
    """POST /_test/webhooks/drain[?timeout=seconds]: wait until every queued event has been
    handed to every endpoint (or the timeout, default 10 s, passes)."""
    deadline = time.monotonic() + float(request.query.get('timeout', '10'))
    while undelivered() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return json_response({'pending': undelivered()})


async def delete_webhook(request):
    """DELETE /_config/webhooks/{id}: unregister an endpoint."""
    ls_webhooks._webhooks.pop(request.match_info['id'], None)
    OUTBOX.pop(request.match_info['id'], None)
    return web.Response()


async def flush_data(request):
    """DELETE /_config/data: forget every object, idempotency key and queued event (webhook
    endpoints stay registered, as with stock localstripe)."""
    store.clear()
    IDEMPOTENCY.clear()
    OUTBOX.clear()
    FAULTS.clear()
    METER_EVENTS.clear()
    METER_ERRORS.clear()
    METER_IDENTIFIERS.clear()
    METER_IN_FLIGHT.clear()
    METER_MAX_IN_FLIGHT.clear()
    return web.Response()


RAW_ROUTES = [
    ('GET', '/_test/hosted/{id}', hosted_invoice_page),
    ('GET', '/_test/portal/{id}', portal_page),
    ('POST', '/_test/webhooks/drain', drain_webhooks),
    ('DELETE', '/_config/webhooks/{id}', delete_webhook),
    ('DELETE', '/_config/data', flush_data),
]


# ---------------------------------------------------------------------------------------------
# Issue 20 (objects made outside Tollgate): one-off invoices and their items.
# https://docs.stripe.com/invoicing/integration, https://docs.stripe.com/api/invoiceitems/create,
# https://docs.stripe.com/api/invoices/create, .../finalize, .../delete.  An invoice item made with
# `amount` gets an inline one-time price (Stripe shows one on every item), its own product.
# ---------------------------------------------------------------------------------------------

def one_off_line_parent(spec):
    """The `parent` of an invoice line made from a one-off invoice item (no subscription)."""
    return {'invoice_item_details': {'invoice_item': spec.get('invoice_item'),
                                     'proration': False,
                                     'proration_details': {'credited_items': None},
                                     'subscription': None},
            'subscription_item_details': None, 'type': 'invoice_item_details'}


def _one_off_spec(amount, currency, description, price):
    t = wall()
    return {'amount': amount, 'currency': currency, 'description': description,
            'period_start': t, 'period_end': t, 'price': price.id, 'quantity': 1,
            'proration': False, 'subscription': None, 'subscription_item': None}


def _draft_invoice(id, param='invoice'):
    inv = Invoice.get(id, param=param, status=404 if param == 'id' else 400)
    if inv.status != 'draft':
        raise invalid(f'This invoice is no longer editable: it has a status of {inv.status}.',
                      param=None if param == 'id' else param, code='invoice_not_editable')
    return inv


@route('POST', '/v1/invoiceitems')
def invoice_items_create(p):
    """A one-off invoice item: `customer`, `amount` + `currency` (or `pricing[price]`, a one-time
    price), `description`, and optionally a draft `invoice` to add it to (else it is pending)."""
    cust = Customer.get(p.str('customer', required=True), param='customer', status=400)
    amount = p.int('amount')
    currency = p.str('currency')
    price_id = p.sub('pricing').str('price') if 'pricing' in p else None
    description = p.str('description')
    invoice_id = p.str('invoice')
    metadata = p.metadata()
    p.ignore('discountable', 'tax_behavior')
    p.finish()
    if price_id is not None:
        price = Price.get(price_id, param='pricing[price]', status=400)
        amount, currency = price.unit_amount, price.currency
    else:
        if amount is None:
            raise missing_param('amount')
        if currency is None:
            raise missing_param('currency')
        product = Product(description or 'Invoice item')
        price = Price(currency, amount, product.id, active=False)
    inv = _draft_invoice(invoice_id) if invoice_id else None
    spec = _one_off_spec(amount, currency.lower(), description or price._product_name(), price)
    ii = InvoiceItem(cust.id, spec, wall())
    ii.metadata = metadata or {}
    if inv is not None:
        before = inv._export()
        ii.invoice = inv.id
        inv.lines.append(InvoiceLine(inv.id, ii.spec, False))
        emit('invoice.updated', inv, before)
    emit('invoiceitem.created', ii)
    return ii._export()


@route('POST', '/v1/invoices')
def invoices_create(p):
    """A draft one-off invoice for `customer` (no subscription).  With
    `pending_invoice_items_behavior=include` it takes the customer's pending items; the default
    (`exclude`, the API's default since 2022-08-01) leaves them pending."""
    cust = Customer.get(p.str('customer', required=True), param='customer', status=400)
    behavior = p.str('pending_invoice_items_behavior', choices=('include', 'exclude'),
                     default='exclude')
    currency = p.str('currency')
    auto_advance = p.bool('auto_advance', default=False)
    metadata = p.metadata()
    p.ignore('description', 'collection_method', 'days_until_due')
    p.finish()
    pending = [ii for ii in objects('invoiceitem')
               if ii.customer == cust.id and ii.invoice is None and ii.spec['subscription'] is None]
    take = sorted(pending, key=lambda ii: ii._seq) if behavior == 'include' else []
    currency = (currency or (take[0].spec['currency'] if take else None) or cust.currency
                or 'usd').lower()
    t = wall()
    inv = Invoice(cust, None, 'manual', t, t, t, [ii.spec for ii in take] or [{'currency': currency}])
    if not take:
        inv.lines = []
    for ii in take:
        ii.invoice = inv.id
    inv.currency = currency
    inv.auto_advance = auto_advance
    inv.metadata = metadata or {}
    emit('invoice.created', inv)
    return inv._export()


@route('POST', '/v1/invoices/{id}/finalize')
def invoices_finalize(p, id):
    inv = _draft_invoice(id, param='id')
    p.ignore('auto_advance')
    p.finish()
    finalize_invoice(inv)
    return inv._export()


@route('DELETE', '/v1/invoices/{id}')
def invoices_delete(p, id):
    """Stripe deletes draft invoices only ("Permanently deletes a one-off invoice draft"); a later
    retrieve is 404 resource_missing.  Its items become pending again."""
    inv = _draft_invoice(id, param='id')
    p.finish()
    for ii in objects('invoiceitem'):
        if ii.invoice == inv.id:
            ii.invoice = None
    inv._deleted = True
    emit('invoice.deleted', inv)
    return deleted_object(inv)


# ---------------------------------------------------------------------------------------------
# Issue 20: injected faults.  POST /_test/faults {method, path, kind, count, delay_ms, status}
# makes the next `count` API requests whose method matches and whose path matches the regular
# expression `path` answer as Stripe does when it fails (https://docs.stripe.com/error-codes,
# https://docs.stripe.com/rate-limits, https://docs.stripe.com/error-low-level):
#   api_error     500 {"type": "api_error"}                    (Stripe had a problem)
#   rate_limit    429 {"type": "invalid_request_error", "code": "rate_limit"}
#   lock_timeout  429 {"type": "invalid_request_error", "code": "lock_timeout"}  (the object is
#                 locked by another request; Stripe's libraries retry it)
#   slow          the normal answer, after delay_ms
# A fault answers before the endpoint runs, so nothing changes and nothing is saved under an
# Idempotency-Key: Stripe saves results "only after the execution of an endpoint begins"
# (https://docs.stripe.com/api/idempotent_requests).  With `saved=true` an api_error fails
# after execution began: nothing changes either, but the 500 is saved under the request's
# Idempotency-Key and replayed to every retry with that key for 24 h ("Retries with the same key
# return the saved response, including 500 errors", same page).  GET /_test/faults lists them with their hits;
# DELETE /_test/faults removes them.
# ---------------------------------------------------------------------------------------------

FAULTS = []  # [{method, path, kind, remaining, delay_ms, status, hits}]
FAULT_KINDS = ('api_error', 'rate_limit', 'lock_timeout', 'slow')


def take_fault(method, path):
    for f in FAULTS:
        if f['remaining'] > 0 and f['method'] in ('*', method) and re.search(f['path'], path):
            f['remaining'] -= 1
            f['hits'].append(f'{method} {path}')
            return f
    return None


async def fault_response(f):
    """The response of an injected fault; None for a slow one (it only delays)."""
    if f['delay_ms']:
        await asyncio.sleep(f['delay_ms'] / 1000)
    kind = f['kind']
    if kind == 'slow':
        return None
    if kind == 'api_error':
        err = StripeError(f['status'] or 500, 'api_error',
                          'An unknown error occurred (injected by the emulator).')
    elif kind == 'rate_limit':
        err = StripeError(f['status'] or 429, 'invalid_request_error',
                          'Request rate limit exceeded. Learn more about rate limits here '
                          'https://stripe.com/docs/rate-limits.', code='rate_limit')
    else:
        err = StripeError(f['status'] or 429, 'invalid_request_error',
                          'This object cannot be accessed right now because another API request '
                          'or Stripe process is currently accessing it. If you see this error '
                          'intermittently, retry the request.', code='lock_timeout')
    return err.response()


@route('POST', '/_test/faults')
def test_faults_add(p):
    method = p.str('method', default='*').upper()
    path = p.str('path', required=True)
    kind = p.str('kind', required=True, choices=FAULT_KINDS)
    count = p.int('count', default=1, minimum=1)
    delay_ms = p.int('delay_ms', default=0, minimum=0, maximum=60000)
    status = p.int('status', minimum=400, maximum=599)
    saved = p.bool('saved', default=False)
    p.finish()
    if saved and kind != 'api_error':
        raise invalid('Only an api_error can be saved under an idempotency key.', param='saved')
    try:
        re.compile(path)
    except re.error as e:
        raise invalid(f'Invalid path pattern: {e}', param='path')
    f = {'method': method, 'path': path, 'kind': kind, 'remaining': count,
         'delay_ms': delay_ms, 'status': status, 'saved': saved, 'hits': []}
    FAULTS.append(f)
    return dict(f, hits=list(f['hits']))


# A delay every meter event call takes (POST /_test/meter_delay {delay_ms}), so concurrent calls overlap;
# answer_delay_ms delays the answer after the event was recorded, as when a client dies (or its connection is
# cut) between Stripe accepting an event and the client learning it.
METER_CALL_DELAY_MS = 0
METER_ANSWER_DELAY_MS = 0


async def _meter_call_key(request):
    """(customer, event_name) of a meter event call, else None."""
    if request.method != 'POST' or request.path != '/v1/billing/meter_events':
        return None
    form = await request.post()
    return f"{form.get('payload[stripe_customer_id]', '')}/{form.get('event_name', '')}"


@route('POST', '/_test/meter_delay')
def meter_delay(p):
    global METER_CALL_DELAY_MS, METER_ANSWER_DELAY_MS
    METER_CALL_DELAY_MS = p.int('delay_ms', default=0, minimum=0, maximum=10000)
    METER_ANSWER_DELAY_MS = p.int('answer_delay_ms', default=0, minimum=0, maximum=10000)
    p.finish()
    return {'delay_ms': METER_CALL_DELAY_MS, 'answer_delay_ms': METER_ANSWER_DELAY_MS}


@route('GET', '/_test/meter_events')
def meter_events_list(p):
    """The accepted meter events, in arrival order, with when each arrived (wall clock, fractional seconds): a
    test aid to check a client's pacing."""
    p.finish()
    return {'events': [dict({k: v for k, v in e.items() if not k.startswith('_')},
                            customer=e['_customer'], value=str(e['_value']),
                            arrived=e.get('_arrived'))
                       for e in METER_EVENTS]}


@route('GET', '/_test/meter_concurrency')
def meter_concurrency(p):
    p.finish()
    return {'max_in_flight': dict(METER_MAX_IN_FLIGHT)}


@route('GET', '/_test/meter_errors')
def test_meter_errors(p):
    """Meter events accepted but refused by the asynchronous validation, with Stripe's error
    code (what billing.meter.error_report_triggered would report)."""
    p.finish()
    return {'errors': [{k: v for k, v in e.items() if not k.startswith('_')}
                       for e in METER_ERRORS]}


@route('GET', '/_test/faults')
def test_faults_list(p):
    p.finish()
    return {'faults': [dict(f, hits=list(f['hits'])) for f in FAULTS]}


@route('DELETE', '/_test/faults')
def test_faults_clear(p):
    p.finish()
    FAULTS.clear()
    return {'faults': []}


# ---------------------------------------------------------------------------------------------
# Issue 20: idempotency keys expire after 24 hours (https://docs.stripe.com/api/idempotent_requests:
# "You can remove keys from the system automatically after they're at least 24 hours old. We
# generate a new request if a key is reused after the original is pruned.").  Keys are stored with
# their creation time on the emulator's wall clock; POST /_test/idempotency/age {seconds} ages every
# stored key (tests cannot wait a day).
# ---------------------------------------------------------------------------------------------

IDEMPOTENCY_TTL = 24 * 3600


def idempotency_key_expired(rec):
    return 'created' in rec and wall() - rec['created'] >= IDEMPOTENCY_TTL


@route('POST', '/_test/idempotency/age')
def test_idempotency_age(p):
    seconds = p.int('seconds', required=True, minimum=0)
    p.finish()
    aged = 0
    for rec in IDEMPOTENCY.values():
        if 'created' in rec:
            rec['created'] -= seconds
            aged += 1
    return {'aged': aged}


# ---------------------------------------------------------------------------------------------
# Issue 20: webhooks held, released out of order and late.  Stripe "doesn't guarantee delivery of
# events in the order in which they're generated" (https://docs.stripe.com/webhooks#event-ordering)
# and retries failed deliveries for days.  POST /_test/webhooks/hold stops deliveries (events keep
# queueing); POST /_test/webhooks/release {order: fifo|reverse|shuffle, seed, delay_ms, copies} delivers
# what was held in that order, after delay_ms; with copies=n each held event is delivered n times
# ("Webhook endpoints might occasionally receive the same event more than once",
# https://docs.stripe.com/webhooks#handle-duplicate-events), the copies shuffled with the rest.
# ---------------------------------------------------------------------------------------------

HELD = {'on': False}


@route('POST', '/_test/webhooks/hold')
def test_webhooks_hold(p):
    p.finish()
    HELD['on'] = True
    return {'held': True, 'pending': undelivered()}


def _release(order, seed, copies=1):
    for wid, queue in OUTBOX.items():
        held = [eid for eid in queue if '#' not in eid]  # the events, not earlier copies
        queue.extend([f'{eid}#{n}' for eid in held for n in range(2, copies + 1)])
        if order == 'reverse':
            queue.reverse()
        elif order == 'shuffle':
            random.Random(seed).shuffle(queue)
    HELD['on'] = False
    for wid in list(OUTBOX):
        _wake(wid)


async def _release_later(order, seed, delay_ms, copies):
    await asyncio.sleep(delay_ms / 1000)
    _release(order, seed, copies)


@route('POST', '/_test/webhooks/release')
def test_webhooks_release(p):
    order = p.str('order', choices=('fifo', 'reverse', 'shuffle'), default='fifo')
    seed = p.int('seed', default=0)
    delay_ms = p.int('delay_ms', default=0, minimum=0, maximum=600000)
    copies = p.int('copies', default=1, minimum=1, maximum=20)
    p.finish()
    held = undelivered()
    if delay_ms:
        asyncio.ensure_future(_release_later(order, seed, delay_ms, copies))
    else:
        _release(order, seed, copies)
    return {'released': held, 'order': order, 'delay_ms': delay_ms}


# ---------------------------------------------------------------------------------------------
# HTTP layer: parameters, authentication, idempotency, errors
# ---------------------------------------------------------------------------------------------

async def read_params(request):
    """Stripe's form encoding (items[0][price]=..., expand[]=...), decoded by localstripe's
    unflatten_data, from the body (POST, and DELETE as async-stripe sends it) and the query."""
    data = {}
    if request.method in ('POST', 'DELETE') and request.body_exists:
        form = await request.post()
        if form:
            data = ls_server.unflatten_data(form)
    if request.query:
        for k, v in ls_server.unflatten_data(request.query).items():
            data.setdefault(k, v)
    return data


def api_handler(fn):
    async def handler(request):
        data = await read_params(request)
        expand = data.pop('expand', None) or []
        if isinstance(expand, str):
            expand = [expand]
        if not isinstance(expand, list) or not all(isinstance(e, str) for e in expand):
            raise invalid('Invalid array', param='expand')
        if any(len(path.split('.')) > 4 for path in expand):
            raise invalid('You cannot expand more than 4 levels of a property.', param='expand')
        p = Params(data)
        p.expand = list(expand)  # a handler may consume some (search: total_count)
        result = fn(p, **request.match_info)
        p.finish()  # safety net: handlers call it before acting
        for path in p.expand:
            result = expand_path(result, path.split('.'), path)
        return json_response(result)
    return handler


def api_key_of(request):
    """The secret key from `Authorization: Bearer sk_test_...` (or HTTP basic auth)."""
    auth = request.headers.get('Authorization', '')
    key = None
    if auth.startswith('Bearer '):
        key = auth[7:].strip()
    elif auth.startswith('Basic '):
        import base64
        try:
            key = base64.b64decode(auth[6:]).decode().split(':')[0]
        except Exception:
            key = None
    if not key:
        raise StripeError(401, 'invalid_request_error',
                          'You did not provide an API key. You need to provide your API key in '
                          "the Authorization header, using Bearer auth (e.g. 'Authorization: "
                          "Bearer YOUR_SECRET_KEY').")
    if not re.fullmatch(r'(sk|rk)_test_\w+', key):
        raise StripeError(401, 'invalid_request_error',
                          f'Invalid API Key provided: {key[:8]}****{key[-4:]}'
                          ' (the emulator accepts test-mode secret keys, sk_test_...)')
    return key


# (api key, idempotency key) -> {endpoint, fingerprint, status, body, request_id} (saved)
IDEMPOTENCY = {}


def _fingerprint(raw_body, query):
    pairs = []
    from urllib.parse import parse_qsl
    if raw_body:
        pairs += parse_qsl(raw_body.decode('utf-8', 'replace'), keep_blank_values=True)
    pairs += parse_qsl(query, keep_blank_values=True)
    return hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest()


def _idempotency_error(message, status=400, code=None):
    return StripeError(status, 'idempotency_error', message, code=code).response()


async def _idempotent(request, run, ctx):
    """Stripe's idempotency: the same key on the same endpoint with the same parameters replays
    the saved response (Idempotent-Replayed: true) without acting again; with another endpoint
    or other parameters it is an idempotency_error.  Keys are scoped to the API key.  As on
    Stripe, responses to requests that failed validation (400/404) are not saved, so such a
    request can be retried with the same key; results (2xx, 402, 5xx) are."""
    key = ctx.idempotency_key
    if len(key) > 255:
        return invalid('Invalid idempotency key: keys are at most 255 characters.').response()
    raw = await request.read()
    fp = _fingerprint(raw, request.query_string)
    endpoint = f'{request.method} {request.path}'
    slot = (ctx.api_key, key)
    rec = IDEMPOTENCY.get(slot)
    if rec is not None and idempotency_key_expired(rec):
        # Pruned after 24 h: the key is new again (see "Idempotency keys expire after 24 hours").
        IDEMPOTENCY.pop(slot, None)
        rec = None
    if rec is not None:
        if rec.get('in_flight'):
            return _idempotency_error('There is currently another in-progress request using '
                                      f"this Idempotent Key (that probably means you submitted "
                                      f"twice, and the other request is still going through): "
                                      f"{key}. Please try again later.", 409,
                                      'idempotency_key_in_use')
        if rec['endpoint'] != endpoint:
            return _idempotency_error(
                'Keys for idempotent requests can only be used for the same endpoint they were '
                f"first used for ('{rec['endpoint']}' vs '{endpoint}'). Try using a key other "
                f"than '{key}' if you meant to execute a different request.")
        if rec['fingerprint'] != fp:
            return _idempotency_error(
                'Keys for idempotent requests can only be used with the same parameters they '
                f"were first used with. Try using a key other than '{key}' if you meant to "
                'execute a different request.')
        resp = web.Response(text=rec['body'], status=rec['status'],
                            content_type='application/json')
        resp.headers['Idempotent-Replayed'] = 'true'
        resp.headers['Original-Request'] = rec['request_id']
        return resp
    IDEMPOTENCY[slot] = {'in_flight': True}
    resp = None
    try:
        resp = await run(request)
    finally:
        if resp is not None and (resp.status < 400 or resp.status == 402 or resp.status >= 500):
            IDEMPOTENCY[slot] = {'endpoint': endpoint, 'fingerprint': fp,
                                 'status': resp.status, 'body': resp.text,
                                 'request_id': ctx.id, 'created': wall()}
        else:
            IDEMPOTENCY.pop(slot, None)
    return resp


def _unrecognized(request):
    return invalid(f'Unrecognized request URL ({request.method}: {request.path}). Please see '
                   'https://stripe.com/docs or we can help at https://support.stripe.com/.',
                   status=404).response()


@web.middleware
async def stripe_middleware(request, handler):
    """Request-Id on every response, the API key check, idempotency, and Stripe's JSON error
    envelope for every failure (stock localstripe sometimes answers plain text)."""
    is_api = request.path.startswith('/v1/')
    ctx = RequestContext(new_id('req_', 14))
    # Events caused by API requests name the request; those of the test endpoints (renewals)
    # have request {id: null, idempotency_key: null}, like Stripe's automatic events.
    token = REQUEST.set(ctx if is_api else None)

    async def run(req):
        try:
            return await handler(req)
        except StripeError as e:
            return e.response()
        except UserError as e:  # raised by stock localstripe code
            body = dict(e.body.get('error', {}))
            body.setdefault('type', 'invalid_request_error')
            body.setdefault('message', 'Bad request')
            return json_response({'error': body}, status=e.code)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            return _unrecognized(req)
        except web.HTTPException:
            raise
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return StripeError(500, 'api_error', f'The Stripe emulator failed: '
                                                 f'{type(e).__name__}: {e}').response()

    try:
        if is_api:
            try:
                ctx.api_key = api_key_of(request)
            except StripeError as e:
                resp = e.response()
            else:
                # An injected fault answers before the endpoint runs: nothing is changed and
                # nothing saved under an idempotency key; a slow one only delays (see "Injected
                # faults").
                meter_key = await _meter_call_key(request)
                if meter_key is not None:
                    METER_IN_FLIGHT[meter_key] = METER_IN_FLIGHT.get(meter_key, 0) + 1
                    METER_MAX_IN_FLIGHT[meter_key] = max(METER_MAX_IN_FLIGHT.get(meter_key, 0),
                                                         METER_IN_FLIGHT[meter_key])
                try:
                    fault = take_fault(request.method, request.path)
                    resp = await fault_response(fault) if fault is not None else None
                    if resp is None and meter_key is not None and METER_CALL_DELAY_MS:
                        await asyncio.sleep(METER_CALL_DELAY_MS / 1000)
                finally:
                    if meter_key is not None:
                        METER_IN_FLIGHT[meter_key] -= 1
                key = request.headers.get('Idempotency-Key')
                if resp is not None and fault.get('saved') and key \
                        and request.method in ('POST', 'DELETE'):
                    # Failed after execution began: saved under the key, replayed to retries.
                    ctx.idempotency_key = key
                    failed = resp

                    async def fail(_request):
                        return failed
                    resp = await _idempotent(request, fail, ctx)
                elif resp is not None:
                    pass
                elif key and request.method in ('POST', 'DELETE'):
                    ctx.idempotency_key = key
                    resp = await _idempotent(request, run, ctx)
                else:
                    resp = await run(request)
                if meter_key is not None and METER_ANSWER_DELAY_MS:
                    await asyncio.sleep(METER_ANSWER_DELAY_MS / 1000)
        else:
            resp = await run(request)
    finally:
        REQUEST.reset(token)
    resp.headers['Request-Id'] = ctx.id
    if is_api:
        resp.headers['Stripe-Version'] = API_VERSION
        if ctx.idempotency_key:
            resp.headers['Idempotency-Key'] = ctx.idempotency_key
    return resp


def make_app():
    """The emulator's aiohttp application: our routes first, then stock localstripe's routes
    outside the paths we own (charges, payment intents, plans, coupons, tax rates, tokens,
    sources, refunds, payouts, balance, /_config/webhooks/{id}...)."""
    app = web.Application(middlewares=[stripe_middleware])
    ours = set()
    for method, path, fn in ROUTES:
        app.router.add_route(method, path, api_handler(fn))
        ours.add((method, path))
    for method, path, fn in RAW_ROUTES:
        app.router.add_route(method, path, fn)
        ours.add((method, path))
    for r in ls_server.app.router.routes():
        path = r.resource.canonical if r.resource is not None else None
        if path is None or (r.method, path) in ours or r.method == 'HEAD':
            continue
        if any(path == p or path.startswith(p + '/') for p in OWNED_PREFIXES):
            continue
        app.router.add_route(r.method, path, r.handler)
    app.on_startup.append(_start_delivery)
    app.on_cleanup.append(_stop_delivery)
    return app


# ---------------------------------------------------------------------------------------------
# State file (run.py --state-file): everything a restart must keep
# ---------------------------------------------------------------------------------------------

STATE_VERSION = 1


def save_state(path):
    state = {
        'version': STATE_VERSION,
        'store': dict(store),
        'webhooks': dict(ls_webhooks._webhooks),
        'idempotency': {k: v for k, v in IDEMPOTENCY.items() if not v.get('in_flight')},
        'outbox': {wid: list(q) for wid, q in OUTBOX.items()},
        'deliveries': DELIVERIES[-500:],
        'meter_events': list(METER_EVENTS),
        'meter_errors': list(METER_ERRORS),
        'meter_identifiers': dict(METER_IDENTIFIERS),
        'seq': next_seq(),
    }
    tmp = f'{path}.tmp'
    with open(tmp, 'wb') as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_state(path):
    global _seq
    with open(path, 'rb') as f:
        state = pickle.load(f)
    if state.get('version') != STATE_VERSION:
        raise RuntimeError(f'{path}: unknown state version {state.get("version")}')
    store.clear()
    store.update(state['store'])
    ls_webhooks._webhooks.clear()
    ls_webhooks._webhooks.update(state['webhooks'])
    IDEMPOTENCY.clear()
    IDEMPOTENCY.update(state['idempotency'])
    OUTBOX.clear()
    OUTBOX.update(state['outbox'])
    DELIVERIES[:] = state['deliveries']
    METER_EVENTS[:] = state.get('meter_events', [])
    METER_ERRORS[:] = state.get('meter_errors', [])
    METER_IDENTIFIERS.clear()
    METER_IDENTIFIERS.update(state.get('meter_identifiers', {}))
    _seq = itertools.count(state['seq'] + 1)
