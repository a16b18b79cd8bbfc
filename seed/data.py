"""Deterministic demo data: the same seed number always yields the same documents."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from backend.domain import Document
from backend.domain.clock import iso
from backend.domain.orders import new_order_id

CATEGORIES: dict[str, tuple[str, tuple[int, int], tuple[str, ...]]] = {
    # category: (sku prefix, price range in cents, nouns)
    "Electronics": ("ELE", (1_999, 129_999), ("Headphones", "Speaker", "Monitor", "Keyboard",
                                              "Webcam", "Charger", "Tablet", "Router")),
    "Books": ("BOO", (799, 5_999), ("Cookbook", "Novel", "Atlas", "Field Guide", "Anthology",
                                    "Biography", "Workbook", "Almanac")),
    "Home": ("HOM", (1_299, 39_999), ("Lamp", "Kettle", "Blanket", "Vase", "Clock", "Rug",
                                      "Pan Set", "Mirror")),
    "Outdoors": ("OUT", (1_499, 89_999), ("Tent", "Backpack", "Lantern", "Hammock",
                                          "Water Filter", "Trekking Poles", "Cooler", "Compass")),
    "Toys": ("TOY", (599, 14_999), ("Puzzle", "Robot Kit", "Kite", "Board Game", "Plush Bear",
                                    "Train Set", "Yo-yo", "Building Blocks")),
    "Grocery": ("GRO", (199, 4_999), ("Coffee Beans", "Olive Oil", "Honey", "Green Tea",
                                      "Pasta", "Chocolate", "Granola", "Hot Sauce")),
    "Apparel": ("APP", (1_499, 24_999), ("Rain Jacket", "Hoodie", "Sneakers", "Scarf",
                                         "Beanie", "Denim Jeans", "Wool Socks", "T-shirt")),
    "Beauty": ("BEA", (499, 9_999), ("Face Cream", "Shampoo", "Lip Balm", "Perfume",
                                     "Soap Bar", "Sunscreen", "Hair Oil", "Body Lotion")),
}
ADJECTIVES = ("Aurora", "Summit", "Velvet", "Nimbus", "Cedar", "Cobalt", "Harbor", "Maple",
              "Orbit", "Willow", "Granite", "Solar")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Margaret", "Dennis",
               "Radia", "Edsger", "Frances", "Tim", "Hedy", "John", "Katherine", "Guido",
               "Lynn", "Niklaus", "Shafi", "Donald", "Annie", "Bjarne", "Sophie", "Yukihiro",
               "Joan", "Brian", "Mary", "Leslie")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Thompson", "Hamilton",
              "Ritchie", "Perlman", "Dijkstra", "Allen", "Berners-Lee", "Lamarr", "McCarthy",
              "Johnson", "van Rossum", "Conway", "Wirth", "Goldwasser", "Knuth", "Easley",
              "Stroustrup", "Wilson", "Matsumoto", "Clarke", "Kernighan", "Keller", "Lamport")

STATUS_PATHS: dict[str, tuple[str, ...]] = {
    "pending": ("pending",),
    "reserved": ("pending", "reserved"),
    "paid": ("pending", "reserved", "paid"),
    "processing": ("pending", "reserved", "paid", "processing"),
    "shipped": ("pending", "reserved", "paid", "processing", "shipped"),
    "delivered": ("pending", "reserved", "paid", "processing", "shipped", "delivered"),
    "rejected": ("pending", "rejected"),
    "payment_failed": ("pending", "reserved", "payment_failed"),
    "cancelled": ("pending", "reserved", "cancelled"),
}
STATUS_WEIGHTS = {
    "delivered": 40, "shipped": 10, "processing": 6, "paid": 3, "reserved": 2, "pending": 2,
    "rejected": 12, "payment_failed": 12, "cancelled": 13,
}
ACTORS = {"pending": "customer", "cancelled": "customer", "shipped": "admin",
          "delivered": "admin"}

ADMIN_ID = "user-admin"
ADMIN_EMAIL = "admin@example.com"
LOW_STOCK_THRESHOLD = 10


def customer_email(n: int) -> str:
    """The demo e-mail of customer ``n`` (1-based)."""
    return f"customer{n:02d}@example.com"


def customer_id(n: int) -> str:
    """The user id of customer ``n`` (1-based)."""
    return f"user-customer{n:02d}"


@dataclass(frozen=True, slots=True)
class DemoData:
    """The generated documents (users without password hashes)."""

    products: list[Document]
    users: list[Document]
    orders: list[Document]


def generate(*, seed: int = 42, customers: int = 25, orders: int = 300,
             now: datetime) -> DemoData:
    """Products, users and historical orders; deterministic for a given ``seed`` and ``now``."""
    rng = random.Random(seed)
    products = _products(rng, now)
    users = _users(customers)
    history = [_order(rng, products, users[1:], now) for _ in range(orders)]
    history.sort(key=lambda order: order["created_at"])
    return DemoData(products=products, users=users, orders=history)


def _products(rng: random.Random, now: datetime) -> list[Document]:
    products = []
    for category, (prefix, (low, high), nouns) in CATEGORIES.items():
        adjectives = rng.sample(ADJECTIVES, len(nouns))
        for index, (noun, adjective) in enumerate(zip(nouns, adjectives, strict=True), 1):
            roll = rng.random()
            if roll < 0.06:
                stock = 0
            elif roll < 0.2:
                stock = rng.randint(1, LOW_STOCK_THRESHOLD - 1)
            else:
                stock = rng.randint(LOW_STOCK_THRESHOLD, 250)
            price = rng.randint(low, high) // 100 * 100 + 99
            products.append({
                "_id": f"SKU-{prefix}-{index:03d}",
                "name": f"{adjective} {noun}",
                "category": category,
                "price_cents": price,
                "stock": stock,
                "low_stock_threshold": LOW_STOCK_THRESHOLD,
                "updated_at": iso(now),
            })
    return products


def _users(customers: int) -> list[Document]:
    users: list[Document] = [
        {"_id": ADMIN_ID, "email": ADMIN_EMAIL, "name": "Ada Admin", "role": "admin"}
    ]
    for n in range(1, customers + 1):
        first = FIRST_NAMES[(n - 1) % len(FIRST_NAMES)]
        last = LAST_NAMES[(n * 7) % len(LAST_NAMES)]
        users.append({
            "_id": customer_id(n),
            "email": customer_email(n),
            "name": f"{first} {last}",
            "role": "customer",
        })
    return users


def _order(rng: random.Random, products: list[Document], customers: list[Document],
           now: datetime) -> Document:
    customer = rng.choice(customers)
    chosen = rng.sample(products, rng.randint(1, 4))
    items = [
        {"product_id": p["_id"], "name": p["name"], "quantity": rng.randint(1, 3),
         "price_cents": p["price_cents"]}
        for p in chosen
    ]
    status = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]
    created = now - timedelta(seconds=rng.randint(15 * 60, 14 * 24 * 3600))
    at = created
    history = []
    for step in STATUS_PATHS[status]:
        history.append({"status": step, "at": iso(at), "by": ACTORS.get(step, "pipeline")})
        at += timedelta(seconds=rng.randint(1, 3600))
    order: Document = {
        "_id": new_order_id(rng),
        "user_id": customer["_id"],
        "items": items,
        "total_cents": sum(i["quantity"] * i["price_cents"] for i in items),
        "status": status,
        "history": history,
        "correlation_id": f"{rng.getrandbits(128):032x}",
        "created_at": iso(created),
        "updated_at": history[-1]["at"],
        "payment": None,
    }
    if "paid" in STATUS_PATHS[status]:
        order["payment"] = {"status": "captured",
                            "transaction_id": f"TXN-{rng.getrandbits(32):010d}"}
    elif status == "payment_failed":
        order["payment"] = {"status": "declined", "transaction_id": None}
        order["failure_reason"] = "card declined"
    elif status == "rejected":
        order["failure_reason"] = f"out of stock: {items[0]['product_id']}"
    return order
