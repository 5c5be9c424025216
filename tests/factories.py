from typing import Any

import factory
from django.utils import timezone
from factory.declarations import Sequence
from factory.faker import Faker

from apps.accounts.models import User

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User

    email = Sequence(lambda n: f"person{n}@example.test")
    name = Faker("name")

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        password = kwargs.pop("password", PASSWORD)
        email = kwargs.pop("email")
        kwargs.setdefault("email_verified_at", timezone.now())  # tests' people have confirmed addresses
        return model_class.objects.create_user(email, password, **kwargs)


def make_user(email: str, name: str = "") -> User:
    user: User = UserFactory.create(email=email, name=name)
    return user
