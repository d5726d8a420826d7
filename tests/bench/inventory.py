"""A small inventory module: the code-edit benchmark asks the model to rewrite it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Item:
    sku: str
    name: str
    quantity: int = 0
    price: float = 0.0
    tags: list[str] = field(default_factory=list)

    def total_value(self) -> float:
        return self.quantity * self.price


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add_item(self, item: Item) -> None:
        if item.sku in self.items:
            raise ValueError(f"duplicate sku: {item.sku}")
        self.items[item.sku] = item

    def remove_item(self, sku: str) -> Item:
        try:
            return self.items.pop(sku)
        except KeyError:
            raise KeyError(f"unknown sku: {sku}") from None

    def restock(self, sku: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        item = self.items[sku]
        item.quantity += amount
        return item.quantity

    def sell(self, sku: str, amount: int) -> float:
        item = self.items[sku]
        if amount > item.quantity:
            raise ValueError(f"only {item.quantity} left of {item.name}")
        item.quantity -= amount
        return amount * item.price

    def low_stock(self, threshold: int = 5) -> list[Item]:
        return sorted((i for i in self.items.values() if i.quantity < threshold),
                      key=lambda i: i.quantity)

    def by_tag(self, tag: str) -> list[Item]:
        return [i for i in self.items.values() if tag in i.tags]

    def total_value(self) -> float:
        return sum(i.total_value() for i in self.items.values())

    def save(self, path: Path) -> None:
        data = [vars(i) for i in self.items.values()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Inventory":
        inv = cls()
        for row in json.loads(path.read_text()):
            inv.add_item(Item(**row))
        return inv


def report(inv: Inventory) -> str:
    lines = [f"{'sku':<10}{'name':<20}{'qty':>6}{'value':>10}"]
    for item in sorted(inv.items.values(), key=lambda i: i.sku):
        lines.append(f"{item.sku:<10}{item.name:<20}{item.quantity:>6}{item.total_value():>10.2f}")
    lines.append(f"{'total':<36}{inv.total_value():>10.2f}")
    return "\n".join(lines)
