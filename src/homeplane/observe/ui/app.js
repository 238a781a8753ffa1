// The status page: /status and /api/v1/ui-summary every few seconds, flows followed with
// /api/v1/flows?after=N&wait=10. Every value goes in with textContent: hostnames and paths in
// flows come from clients.
"use strict";

const MAX_FLOWS = 200;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  const fresh = document.createElement("tbody");
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const c of cells) Array.isArray(c) ? cell(tr, c[0], c[1]) : cell(tr, c);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function conditions(list) {
  return (list || []).filter(c => c.type !== "Conflicted" ? c.status !== "True" : c.status === "True")
    .map(c => `${c.type}=${c.status} ${c.reason || ""}`).join("; ") || "ok";
}

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function refresh() {
  try {
    const [status, summary] = await Promise.all([getJSON("/status"), getJSON("/api/v1/ui-summary")]);
    const overall = document.getElementById("overall");
    overall.textContent = summary.state;
    overall.className = `state ${summary.state}`;
    document.getElementById("version").textContent = `${status.homeplaneVersion} · snapshot ${status.runtime.servingVersion}`;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    fill("components", summary.components.map(c => [c.name, [c.state, c.state], c.detail + (c.problems.length ? " — " + c.problems.join("; ") : "")]));
    const gw = [];
    for (const g of status.gateways || []) {
      for (const l of g.listeners || []) {
        gw.push([`${g.namespace}/${g.name}`, (g.addresses || []).join(", "), l.name, l.port, l.protocol, l.hostname || "*",
                 l.attachedRoutes, [conditions(l.conditions), l.ready ? "True" : "False"]]);
      }
    }
    fill("gateways", gw);
    fill("routes", (status.routes || []).map(r => {
      const ok = (r.parents || []).length && r.parents.every(p => p.accepted && p.resolvedRefs !== false);
      return [`${r.namespace}/${r.name}`, (r.hostnames || []).join(", "), (r.parents || []).map(p => p.gateway).join(", "),
              [ok ? "Accepted" : (r.parents || []).map(p => `${p.reason}: ${p.message || ""}`).join("; ") || "no parent", ok ? "True" : "False"]];
    }));
    fill("services", (status.services || []).map(s => [`${s.namespace}/${s.name}`, s.type, s.clusterIP || "",
      (s.loadBalancerIPs || []).join(", "), (s.ports || []).map(p => `${p.port}/${p.protocol || "TCP"}`).join(", ")]));
    fill("records", summary.records.map(r => [r.name, r.type, r.targets.join(", "), r.instance, r.resource]));
    fill("certificates", summary.certificates.map(c => [c.name, c.dnsNames.join(", "), c.secret, [c.ready, c.ready], c.notAfter || ""]));
  } catch (e) {
    const overall = document.getElementById("overall");
    overall.textContent = `unreachable: ${e.message}`;
    overall.className = "state error";
  }
}

function endpoint(ep, ip, port) {
  const where = ep && ep.workloads && ep.namespace ? `${ep.namespace}/${ep.workloads[0].name}` : ip || "-";
  return port ? `${where}:${port}` : where;
}

function addFlows(flows) {
  const body = document.querySelector("#flows tbody");
  for (const w of flows) {
    const f = w.flow;
    const l4 = Object.values(f.l4 || {})[0] || {};
    const l7 = f.l7 || {};
    const kind = l7.http ? "http" : l7.dns ? "dns" : Object.keys(f.l4 || {})[0] || "";
    const tr = document.createElement("tr");
    tr.className = "new";
    cell(tr, new Date(f.time).toLocaleTimeString());
    cell(tr, endpoint(f.source, f.IP.source, l4.source_port));
    cell(tr, endpoint(f.destination, f.IP.destination, l4.destination_port));
    cell(tr, kind);
    cell(tr, f.verdict + (f.drop_reason_desc ? ` ${f.drop_reason_desc}` : ""), f.verdict);
    cell(tr, f.Summary);
    body.insertBefore(tr, body.firstChild);
    setTimeout(() => tr.classList.remove("new"), 2000);
  }
  while (body.rows.length > MAX_FLOWS) body.deleteRow(body.rows.length - 1);
}

async function follow() {
  let after = 0;
  try {
    const first = await getJSON("/api/v1/flows?last=50");
    addFlows(first.flows);
    after = first.next;
  } catch (e) {
    document.querySelector("#flows caption")?.remove();
    return;  // no flow ring here (--flows 0)
  }
  for (;;) {
    try {
      if (document.getElementById("paused").checked) { await new Promise(r => setTimeout(r, 1000)); continue; }
      const doc = await getJSON(`/api/v1/flows?after=${after}&wait=10`);
      addFlows(doc.flows);
      after = doc.next;
    } catch (e) {
      await new Promise(r => setTimeout(r, 2000));
    }
  }
}

refresh();
setInterval(refresh, 5000);
follow();
