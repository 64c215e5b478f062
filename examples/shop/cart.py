"""A shopping cart."""

from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    gross: float
    quantity: int = 1


@dataclass
class Cart:
    items: list[Item] = field(default_factory=list)

    def add(self, item: Item) -> None:
        self.items.append(item)

    def total_gross(self) -> float:
        return sum(item.gross * item.quantity for item in self.items)
