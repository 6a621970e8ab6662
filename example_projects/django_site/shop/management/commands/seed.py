"""Management command that fills the example shop with rows."""

import random
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from shop.models import Category, Order, Product

CATEGORIES = ["Books", "Garden", "Kitchen", "Music", "Tools"]
ADJECTIVES = ["Blue", "Compact", "Deluxe", "Light", "Old", "Quiet", "Sturdy"]
NOUNS = ["Box", "Chair", "Kettle", "Lamp", "Record", "Saw", "Spade", "Table"]


class Command(BaseCommand):
    help = (
        "Create example categories, products and orders. Does nothing when "
        "products exist already, unless --reset is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--products",
            type=int,
            default=200,
            help="number of products to create (default: 200)",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="delete all categories, products and orders first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["products"]
        if count < 1:
            raise CommandError(f"--products must be at least 1, got {count}.")

        with transaction.atomic():
            if options["reset"]:
                Category.objects.all().delete()
            existing = Product.objects.count()
            orders = 0 if existing else _create_rows(count)

        if options["verbosity"] < 1:
            return
        if existing:
            self.stdout.write(
                f"The shop has {existing} products already; nothing to do "
                "(pass --reset to start over)."
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created {len(CATEGORIES)} categories, {count} products "
                    f"and {orders} orders."
                )
            )


def _create_rows(count: int) -> int:
    """Create the categories, *count* products and some orders."""
    # A fixed seed gives the same shop on every machine.
    rng = random.Random(20240601)

    Category.objects.bulk_create(
        Category(name=name, slug=name.lower()) for name in CATEGORIES
    )
    categories = list(Category.objects.all())

    Product.objects.bulk_create(
        Product(
            category=rng.choice(categories),
            name=f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} #{number}",
            price=Decimal(rng.randrange(100, 50_000)) / 100,
            stock=rng.randrange(0, 100),
        )
        for number in range(1, count + 1)
    )
    products = list(Product.objects.all())

    orders = [
        Order(product=rng.choice(products), quantity=rng.randrange(1, 5))
        for _ in range(count // 2 + 1)
    ]
    Order.objects.bulk_create(orders)
    return len(orders)
