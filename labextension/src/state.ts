/**
 * The state logic of the extension, free of JupyterLab imports so that it is unit-tested
 * with Node's test runner (src/__tests__/state.spec.ts).
 */
import type {
  IAwarenessState,
  IFoundUser,
  IMeshRoomState,
  IMeshSite
} from './tokens';

/** What the status bar item shows. */
export type StatusKind =
  | 'connecting'
  | 'live'
  | 'offline'
  | 'readonly'
  | 'locked'
  | 'lost'
  | 'unreachable';

/** The status of the current document (notebook or text file), ready to render. */
export interface IStatus {
  kind: StatusKind;
  /** Short text for the status bar. */
  label: string;
  /** A sentence for the tooltip. */
  detail: string;
  /** Unix seconds of the last checkpoint, or null. */
  checkpoint: number | null;
}

/** What the status is computed from. */
export interface IStatusInput {
  /** The node's `mesh` awareness state, or null when absent. */
  mesh: IMeshRoomState | null;
  /** Whether the node's state was seen since the document opened (absent later: disconnected). */
  seen: boolean;
  /** The user's role on the document (from the REST API), or null while unknown. */
  role: 'editor' | 'viewer' | null;
  /** Whether the browser has a network (`navigator.onLine`); true when not given. */
  online?: boolean;
}

/** Format unix seconds as a local wall-clock time ("14:03:12"). */
export function formatTime(seconds: number): string {
  const d = new Date(seconds * 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function checkpointText(checkpoint: number | null): string {
  return checkpoint ? `last checkpoint ${formatTime(checkpoint)}` : 'no checkpoint yet';
}

/**
 * The status of a document, in order of what matters most to the user: not connected,
 * offline (edits are held and will merge), read-only because a viewer, locked by another
 * application, lock lost, storage unreachable (edits are held, not saved), else live.
 */
export function computeStatus(input: IStatusInput): IStatus {
  const { mesh, seen, role } = input;
  const checkpoint = mesh?.checkpoint ?? null;
  if (input.online === false) {
    // The websocket may take up to 30 s to notice (y-websocket's message timeout).
    return {
      kind: 'offline',
      label: 'Offline · changes held, will merge',
      detail:
        'This browser has no network. Your changes stay here and merge when it reconnects.',
      checkpoint
    };
  }
  if (!mesh) {
    if (seen) {
      return {
        kind: 'offline',
        label: 'Offline · changes held, will merge',
        detail:
          'The connection to this site\'s server is lost. Your changes stay in this browser and merge when it returns.',
        checkpoint: null
      };
    }
    return {
      kind: 'connecting',
      label: 'Connecting…',
      detail: 'Waiting for the collaboration server.',
      checkpoint: null
    };
  }
  const cp = checkpointText(checkpoint);
  if (mesh.offline) {
    const away = mesh.primary && mesh.primary !== mesh.site ? mesh.primary : 'the primary node';
    return {
      kind: 'offline',
      label: `Offline from ${away} · changes held, will merge`,
      detail: `${away} cannot be reached. Edits are kept at ${mesh.site} and merge when it returns. ${cp}.`,
      checkpoint
    };
  }
  if (role === 'viewer') {
    return {
      kind: 'readonly',
      label: 'Read-only (viewer)',
      detail: `You can view this file but not edit it. ${cp}.`,
      checkpoint
    };
  }
  if (mesh.lock === 'other') {
    const holder = mesh.holder || 'another application';
    return {
      kind: 'locked',
      label: `Locked by ${holder}`,
      detail: `${holder} holds the file's lock: it is read-only here until it is released. ${cp}.`,
      checkpoint
    };
  }
  if (mesh.lock === 'lost') {
    return {
      kind: 'lost',
      label: 'Lock lost · not saving',
      detail: `The file's lock was taken from this server: writing stopped until it is back. ${cp}.`,
      checkpoint
    };
  }
  if (mesh.lock === 'unreachable') {
    // The node accepts edits but cannot write them: not "Live · saved".
    return {
      kind: 'unreachable',
      label: 'Storage unreachable · changes held',
      detail: `This site's server cannot reach the storage: edits are kept and saved when it answers again. ${cp}.`,
      checkpoint
    };
  }
  const where =
    mesh.lock === 'remote' || mesh.lock === 'linked'
      ? ` · via ${mesh.primary || mesh.holder}`
      : '';
  return {
    kind: 'live',
    label: `Live${where}${checkpoint ? ` · saved ${formatTime(checkpoint)}` : ''}`,
    detail: `Live co-editing at ${mesh.site}${where ? `, linked to ${mesh.primary || mesh.holder}` : ''}. ${cp}.`,
    checkpoint
  };
}

/** One row of the collaborators panel. */
export interface ICollaborator {
  username: string;
  name: string;
  site: string;
  role: string;
  color: string;
  initials: string;
  /** Whether this is the current user (from this browser). */
  me: boolean;
}

/** The node's own `mesh` state among the awareness states (the first one), or null. */
export function meshStateOf(
  states: Iterable<[number, IAwarenessState]>
): IMeshRoomState | null {
  for (const [, state] of states) {
    if (state && state.mesh && !state.user) {
      return state.mesh;
    }
  }
  return null;
}

/**
 * The collaborators of a notebook from its awareness states: one row per user and site
 * (several tabs of one user count once, an editor wins over a viewer), sorted by name.
 * The node's own state (no `user`) is left out. The local user's role is not stamped back
 * to its own browser, so `myRole` fills it in.
 */
export function collaboratorsOf(
  states: Iterable<[number, IAwarenessState]>,
  localClientId: number,
  myRole: string | null
): ICollaborator[] {
  const byKey = new Map<string, ICollaborator>();
  for (const [clientId, state] of states) {
    const user = state?.user;
    if (!user || !user.username) {
      continue;
    }
    const me = clientId === localClientId;
    const site = user.site ?? '';
    const key = `${user.username}@${site}`;
    const name = user.name || user.display_name || user.username;
    const role = me ? myRole ?? user.role ?? '' : user.role ?? '';
    const row: ICollaborator = {
      username: user.username,
      name,
      site,
      role,
      color: user.color ?? '',
      initials: user.initials || name.slice(0, 1).toUpperCase(),
      me
    };
    const seen = byKey.get(key);
    if (!seen) {
      byKey.set(key, row);
    } else {
      seen.me = seen.me || me;
      if (role === 'editor' || !seen.role) {
        seen.role = role;
      }
    }
  }
  return [...byKey.values()].sort(
    (a, b) =>
      Number(b.me) - Number(a.me) ||
      a.name.localeCompare(b.name) ||
      a.site.localeCompare(b.site)
  );
}

/** A person to share with, as the share dialog offers it. */
export interface ICandidate {
  /** What POST /api/mesh/shares takes: "user" (this site) or "user@site" (OCM). */
  grantee: string;
  label: string;
  site: string;
  ocm: boolean;
}

/**
 * The candidates for a search text: this site's users that FindUsers returned, then the
 * same text as a user name at each other site of the mesh (OCM: the other site's user
 * directory is not searchable from here). "name@site" names one site directly.
 */
export function shareCandidates(
  query: string,
  localUsers: IFoundUser[],
  sites: IMeshSite[]
): ICandidate[] {
  const text = query.trim();
  const out: ICandidate[] = localUsers.map(u => ({
    grantee: u.username,
    label: `${u.display_name || u.username} (${u.username}) · ${u.site}`,
    site: u.site,
    ocm: false
  }));
  if (!text) {
    return out;
  }
  const [user, siteName] = text.includes('@')
    ? [text.slice(0, text.lastIndexOf('@')), text.slice(text.lastIndexOf('@') + 1)]
    : [text, ''];
  if (!user || /\s/.test(user)) {
    return out;
  }
  for (const site of sites) {
    if (site.local || (siteName && !site.name.startsWith(siteName))) {
      continue;
    }
    out.push({
      grantee: `${user}@${site.name}`,
      label: `${user} · ${site.name} (another site, OCM)`,
      site: site.name,
      ocm: true
    });
  }
  return out;
}

/** The message of a failed REST call, readable: the server's message, else the status. */
export function errorMessage(
  status: number,
  body: unknown,
  fallback: string
): string {
  let message = '';
  if (body && typeof body === 'object') {
    const b = body as { message?: unknown; reason?: unknown };
    message = typeof b.message === 'string' ? b.message : '';
    if (!message && typeof b.reason === 'string') {
      message = b.reason;
    }
  } else if (typeof body === 'string') {
    message = body.trim().slice(0, 300);
  }
  const base = message || fallback;
  return status ? `${base} (HTTP ${status})` : base;
}
