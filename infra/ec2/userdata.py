"""Writes each launch template's user data script from infra/app.yaml into a directory, with
every ${...} substitution replaced by a placeholder, so check.sh can shellcheck it.
Runs with the PyYAML of cfn-lint's environment (infra/lint/.venv)."""
import re
import sys

import yaml


class Loader(yaml.SafeLoader):
    pass


def any_tag(loader, _suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


Loader.add_multi_constructor("!", any_tag)
template_path, out_dir = sys.argv[1:3]
with open(template_path, encoding="utf-8") as f:
    template = yaml.load(f, Loader=Loader)
count = 0
for name, resource in template["Resources"].items():
    if resource["Type"] != "AWS::EC2::LaunchTemplate":
        continue
    sub = resource["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    script = sub[0] if isinstance(sub, list) else sub
    script = re.sub(r"\$\{[A-Za-z0-9:.]+\}", "placeholder", script)
    with open(f"{out_dir}/{name}.sh", "w", encoding="utf-8") as out:
        out.write(script)
    count += 1
if count == 0:
    sys.exit("no launch template user data found in " + template_path)
