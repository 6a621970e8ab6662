"""Views of the example shop, each exercising one thing mmstats records.

Numbers read from the query string are capped, so a stray request cannot
keep a worker busy for long.
"""

import math
import time
from collections.abc import Iterator

from flask import (
    Blueprint,
    Response,
    abort,
    jsonify,
    render_template,
    request,
    stream_with_context,
)
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from .db import get_session
from .models import Order, Product

DEFAULT_QUERIES = 50
MAX_QUERIES = 10_000
DEFAULT_SLEEP_SECONDS = 1.2
MAX_SLEEP_SECONDS = 10.0
DEFAULT_CHUNKS = 10
MAX_CHUNKS = 1_000
PRODUCTS_PER_PAGE = 20

ENDPOINTS = """\
flask_site example shop, instrumented with mmstats

/fast/                      hello, no queries
/many-queries/?n=50         runs n queries (at most 10000)
/slow/?s=1.2                sleeps s seconds (at most 10)
/not-found/                 answers 404 through abort(404)
/boom/                      raises an unhandled ValueError
/forbidden/                 answers 403 through abort(403)
/stream/?chunks=10          streams chunks, one query each (at most 1000)
/products/?page=1           product list (add format=json for JSON)
/products/<id>/             one product as JSON
"""

bp = Blueprint("shop", __name__)


def _int_arg(name: str, default: int, maximum: int) -> int:
    """Return query argument *name* as an int clamped to ``0..maximum``."""
    raw = request.args.get(name, "")
    if not raw:
        return default

    try:
        value = int(raw)
    except ValueError:
        abort(400, f"{name} must be an integer, got {raw!r}")
    return max(0, min(value, maximum))


def _float_arg(name: str, default: float, maximum: float) -> float:
    """Return query argument *name* as a float clamped to ``0..maximum``."""
    raw = request.args.get(name, "")
    if not raw:
        return default

    try:
        value = float(raw)
    except ValueError:
        abort(400, f"{name} must be a number, got {raw!r}")
    if not math.isfinite(value):
        abort(400, f"{name} must be a finite number, got {raw!r}")
    return max(0.0, min(value, maximum))


@bp.get("/")
def index() -> Response:
    """List the example endpoints."""
    return Response(ENDPOINTS, mimetype="text/plain")


@bp.get("/fast/")
def fast() -> Response:
    """Answer at once, without touching the database."""
    return Response("hello from flask_site\n", mimetype="text/plain")


@bp.get("/many-queries/")
def many_queries() -> Response:
    """Run ``?n=`` small queries (default 50, at most 10000)."""
    count = _int_arg("n", DEFAULT_QUERIES, MAX_QUERIES)
    session = get_session()

    found = 0
    for index in range(count):
        query = select(Product.id).where(Product.id == index % 100 + 1)
        if session.scalar(query) is not None:
            found += 1
    return jsonify(queries=count, found=found)


@bp.get("/slow/")
def slow() -> Response:
    """Sleep ``?s=`` seconds (default 1.2, at most 10)."""
    seconds = _float_arg("s", DEFAULT_SLEEP_SECONDS, MAX_SLEEP_SECONDS)

    time.sleep(seconds)
    return jsonify(slept=seconds)


@bp.get("/not-found/")
def not_found() -> Response:
    """Answer 404 through ``abort``."""
    abort(404)


@bp.get("/boom/")
def boom() -> Response:
    """Raise an unhandled exception, which Flask turns into a 500 response."""
    raise ValueError("boom: an unhandled error from the example shop")


@bp.get("/forbidden/")
def forbidden() -> Response:
    """Answer 403 through ``abort``."""
    abort(403)


@bp.get("/stream/")
def stream() -> Response:
    """Stream ``?chunks=`` lines (default 10), running one query per line.

    The queries run while the server sends the body, after the view has
    returned; ``stream_with_context`` keeps the request context alive.
    """
    chunks = _int_arg("chunks", DEFAULT_CHUNKS, MAX_CHUNKS)

    def generate() -> Iterator[str]:
        session = get_session()
        for index in range(chunks):
            query = select(func.count()).where(Product.stock >= index)
            count = session.scalar(query)
            yield f"chunk {index}: {count} products with stock >= {index}\n"
        yield "done\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


@bp.get("/products/")
def product_list() -> Response | str:
    """List products a page at a time, as HTML or, with ``?format=json``, JSON.

    ``?category=<slug>`` keeps one category; ``?page=`` picks the page.
    """
    session = get_session()
    query = select(Product)
    category = request.args.get("category")
    if category:
        query = query.where(Product.category.has(slug=category))

    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    pages = max(1, math.ceil(total / PRODUCTS_PER_PAGE))
    page = min(max(1, _int_arg("page", 1, pages)), pages)
    products = session.scalars(
        query.options(joinedload(Product.category))
        .order_by(Product.name, Product.id)
        .offset((page - 1) * PRODUCTS_PER_PAGE)
        .limit(PRODUCTS_PER_PAGE)
    ).all()

    if request.args.get("format") == "json":
        return jsonify(
            page=page,
            pages=pages,
            products=[
                {
                    "id": product.id,
                    "name": product.name,
                    "category": product.category.name,
                    "price": str(product.price),
                }
                for product in products
            ],
        )
    return render_template(
        "product_list.html", products=products, page=page, pages=pages
    )


@bp.get("/products/<int:pk>/")
def product_detail(pk: int) -> Response:
    """Show one product and how many orders it has, or answer 404."""
    session = get_session()
    product = session.get(Product, pk, options=[joinedload(Product.category)])
    if product is None:
        abort(404)

    orders = session.scalar(
        select(func.count()).select_from(Order).where(Order.product_id == pk)
    )
    return jsonify(
        id=product.id,
        name=product.name,
        category=product.category.name,
        price=str(product.price),
        stock=product.stock,
        orders=orders,
    )
