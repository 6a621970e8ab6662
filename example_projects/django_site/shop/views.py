"""Views of the example shop, each exercising one thing mmstats records.

Numbers read from the query string are capped, so a stray request cannot
keep a worker busy for long.
"""

import asyncio
import math
import time
from collections.abc import Iterator

from django.core.exceptions import BadRequest, PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render

from .models import Product

DEFAULT_QUERIES = 50
MAX_QUERIES = 10_000
DEFAULT_SLEEP_SECONDS = 1.2
MAX_SLEEP_SECONDS = 10.0
DEFAULT_CHUNKS = 10
MAX_CHUNKS = 1_000
PRODUCTS_PER_PAGE = 20

ENDPOINTS = """\
django_site example shop, instrumented with mmstats

/fast/                      hello, no queries
/many-queries/?n=50         runs n queries (at most 10000)
/slow/?s=1.2                sleeps s seconds (at most 10)
/not-found/                 raises Http404
/boom/                      raises an unhandled ValueError
/forbidden/                 raises PermissionDenied
/stream/?chunks=10          streams chunks, one query each (at most 1000)
/async/                     async view using the async ORM
/products/?page=1           product list (add format=json for JSON)
/products/<id>/             one product as JSON
"""


def _int_param(request: HttpRequest, name: str, default: int, maximum: int) -> int:
    """Return query parameter *name* as an int clamped to ``0..maximum``."""
    raw = request.GET.get(name, "")
    if not raw:
        return default

    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    return max(0, min(value, maximum))


def _float_param(
    request: HttpRequest, name: str, default: float, maximum: float
) -> float:
    """Return query parameter *name* as a float clamped to ``0..maximum``."""
    raw = request.GET.get(name, "")
    if not raw:
        return default

    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {raw!r}")
    return max(0.0, min(value, maximum))


def index(request: HttpRequest) -> HttpResponse:
    """List the example endpoints."""
    return HttpResponse(ENDPOINTS, content_type="text/plain; charset=utf-8")


def fast(request: HttpRequest) -> HttpResponse:
    """Answer at once, without touching the database."""
    return HttpResponse("hello from django_site\n", content_type="text/plain")


def many_queries(request: HttpRequest) -> JsonResponse:
    """Run ``?n=`` small queries (default 50, at most 10000)."""
    count = _int_param(request, "n", DEFAULT_QUERIES, MAX_QUERIES)

    found = 0
    for index in range(count):
        if Product.objects.filter(pk=index % 100 + 1).exists():
            found += 1
    return JsonResponse({"queries": count, "found": found})


def slow(request: HttpRequest) -> JsonResponse:
    """Sleep ``?s=`` seconds (default 1.2, at most 10)."""
    seconds = _float_param(request, "s", DEFAULT_SLEEP_SECONDS, MAX_SLEEP_SECONDS)

    time.sleep(seconds)
    return JsonResponse({"slept": seconds})


def not_found(request: HttpRequest) -> HttpResponse:
    """Raise Http404, which Django turns into a 404 response."""
    raise Http404("This page exists to answer 404.")


def boom(request: HttpRequest) -> HttpResponse:
    """Raise an unhandled exception, which Django turns into a 500 response."""
    raise ValueError("boom: an unhandled error from the example shop")


def forbidden(request: HttpRequest) -> HttpResponse:
    """Raise PermissionDenied, which Django turns into a 403 response."""
    raise PermissionDenied("This page exists to answer 403.")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """Stream ``?chunks=`` lines (default 10), running one query per line.

    The queries run while the server sends the body, after the view and
    the middleware have returned.
    """
    chunks = _int_param(request, "chunks", DEFAULT_CHUNKS, MAX_CHUNKS)

    def generate() -> Iterator[str]:
        for index in range(chunks):
            count = Product.objects.filter(stock__gte=index).count()
            yield f"chunk {index}: {count} products with stock >= {index}\n"
        yield "done\n"

    return StreamingHttpResponse(generate(), content_type="text/plain")


async def async_view(request: HttpRequest) -> JsonResponse:
    """Wait briefly, then query through the async ORM."""
    await asyncio.sleep(0.05)

    count = await Product.objects.acount()
    first = await Product.objects.order_by("pk").afirst()
    return JsonResponse(
        {"products": count, "first": first.name if first is not None else None}
    )


def product_list(request: HttpRequest) -> HttpResponse:
    """List products a page at a time, as HTML or, with ``?format=json``, JSON.

    ``?category=<slug>`` keeps one category; ``?page=`` picks the page.
    """
    products = Product.objects.select_related("category").order_by("name", "pk")
    category = request.GET.get("category")
    if category:
        products = products.filter(category__slug=category)
    page = Paginator(products, PRODUCTS_PER_PAGE).get_page(request.GET.get("page"))

    if request.GET.get("format") == "json":
        return JsonResponse(
            {
                "page": page.number,
                "pages": page.paginator.num_pages,
                "products": [
                    {
                        "id": product.pk,
                        "name": product.name,
                        "category": product.category.name,
                        "price": str(product.price),
                    }
                    for product in page
                ],
            }
        )
    return render(request, "shop/product_list.html", {"page": page})


def product_detail(request: HttpRequest, pk: int) -> JsonResponse:
    """Show one product and how many orders it has, or answer 404."""
    product = get_object_or_404(
        Product.objects.select_related("category").annotate(
            order_count=Count("orders")
        ),
        pk=pk,
    )
    return JsonResponse(
        {
            "id": product.pk,
            "name": product.name,
            "category": product.category.name,
            "price": str(product.price),
            "stock": product.stock,
            "orders": product.order_count,
        }
    )
