"""What a test's agent runs leave in the organization besides themselves: each run that
ends distils its session into the organization's experience (apps/knowledge/sync.py, just
after the run's end is committed), which later tests of an empty knowledge base must not
find."""

from django_tenants.utils import schema_context

from apps.agents.models import AgentProfile, AgentRun
from apps.knowledge import services as knowledge_services
from apps.knowledge.models import KnowledgeRunSync, KnowledgeSource
from apps.tenancy.audit import Actor
from tests.conftest import World, wait_for


def forget_experience(world: World, profile: AgentProfile) -> None:
    """Once the profile's finished runs are distilled, Alpha's experience goes."""
    with schema_context(world.alpha.schema_name):
        run_ids = {
            str(run_id)
            for run_id in AgentRun.objects.filter(profile=profile, state__in=AgentRun.FINISHED).values_list(
                "pk", flat=True
            )
        }

        def distilled() -> bool:
            return KnowledgeRunSync.objects.filter(run_id__in=run_ids).count() == len(run_ids)

        wait_for(distilled, timeout=30)
        for source in KnowledgeSource.objects.filter(kind=KnowledgeSource.Kind.EXPERIENCE):
            knowledge_services.source_delete(
                organization=world.alpha, source=source, actor=Actor(user=world.alice)
            )
        KnowledgeRunSync.objects.filter(run_id__in=run_ids).delete()
