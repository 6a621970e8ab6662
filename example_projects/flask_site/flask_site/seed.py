"""Create the shop's tables and fill them with example rows."""

import random
from decimal import Decimal

import click
from flask import Flask, current_app
from sqlalchemy import delete, func, select

from .db import get_database
from .models import Category, Order, Product

CATEGORIES = ["Books", "Garden", "Kitchen", "Music", "Tools"]
ADJECTIVES = ["Blue", "Compact", "Deluxe", "Light", "Old", "Quiet", "Sturdy"]
NOUNS = ["Box", "Chair", "Kettle", "Lamp", "Record", "Saw", "Spade", "Table"]


def seed_database(app: Flask, products: int = 200, *, reset: bool = False) -> int:
    """Create the tables, then *products* products with categories and orders.

    Rows are added only to an empty shop, unless *reset* deletes the old
    ones first.

    :return: the number of products created, 0 if the shop had some already.
    """
    if products < 1:
        raise ValueError(f"products must be at least 1, got {products!r}.")
    database = get_database(app)
    database.create_tables()

    with database.sessionmaker.begin() as session:
        if reset:
            for model in (Order, Product, Category):
                session.execute(delete(model))
        if session.scalar(select(func.count()).select_from(Product)):
            return 0

        # A fixed seed gives the same shop on every machine.
        rng = random.Random(20240601)
        categories = [Category(name=name, slug=name.lower()) for name in CATEGORIES]
        items = [
            Product(
                category=rng.choice(categories),
                name=f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} #{number}",
                price=Decimal(rng.randrange(100, 50_000)) / 100,
                stock=rng.randrange(0, 100),
            )
            for number in range(1, products + 1)
        ]
        orders = [
            Order(product=rng.choice(items), quantity=rng.randrange(1, 5))
            for _ in range(products // 2 + 1)
        ]
        session.add_all(categories + items + orders)
    return products


@click.command("seed")
@click.option("--products", default=200, show_default=True, help="Number of products.")
@click.option("--reset", is_flag=True, help="Delete all rows first.")
def seed_command(products: int, reset: bool) -> None:
    """Create the tables and fill an empty shop with example rows."""
    if products < 1:
        raise click.BadParameter(
            f"must be at least 1, got {products}.", param_hint="--products"
        )

    created = seed_database(current_app, products, reset=reset)
    if created:
        click.echo(f"Created {len(CATEGORIES)} categories and {created} products.")
    else:
        click.echo("The shop has products already; nothing to do (pass --reset).")
