/**
 * Shapes shared by the plugins: what the mesh_collab node publishes in awareness and what
 * its REST API (`/api/mesh/*`, mesh_collab/jupyter/api.py) answers.
 */

/** The node's own awareness state (`mesh`), see mesh_collab/documents.py `_publish`. */
export interface IMeshRoomState {
  /**
   * held, other (another application), lost, none, linked (another node of the site is
   * primary), remote (another site is home), unreachable (storage does not answer: edits
   * are accepted and held, nothing is written).
   */
  lock: string;
  /** Who holds the lock when it is not us: an application name or a node. */
  holder: string;
  /** Whether the room accepts edits now. */
  editable: boolean;
  /** Unix seconds of the last checkpoint to CS3, or null. */
  checkpoint: number | null;
  /** The site of the node the browser is connected to. */
  site: string;
  /** The site (or node) that holds the lock and writes the file. */
  primary: string;
  /** The state of the link to the primary: online, offline, refused, or "" (no link). */
  link: string;
  /** True while edits are held here because the link to the primary is down. */
  offline: boolean;
}

/** A collaborator's `user` in awareness, as stamped by the node. */
export interface IMeshUser {
  username: string;
  name?: string;
  display_name?: string;
  initials?: string;
  color?: string;
  site?: string;
  cs3_user?: string;
  role?: string;
}

/** One awareness state: the node's (`mesh`) or a browser's (`user`). */
export interface IAwarenessState {
  user?: IMeshUser;
  mesh?: IMeshRoomState;
  [key: string]: unknown;
}

/** `GET /api/mesh/status?path=`: the current user's role on a notebook or text file. */
export interface IDocumentAccess {
  path: string;
  role: 'editor' | 'viewer';
  writable: boolean;
  site: string;
  home: string;
  owner: string;
  remote: boolean;
  /** Where this node's kernels find CS3 files (null: the node starts no kernels there). */
  kernels?: IKernelFiles | null;
}

/** The `kernels` field of `/api/mesh/status`: the node's FUSE mount of CS3, or why not. */
export interface IKernelFiles {
  mounted: boolean;
  /** The kernels' working folder root (the mount, or the local fallback). */
  cwd: string;
  root: string;
  /** Why kernels do not see CS3 (empty when mounted). */
  reason: string;
}

/** A share of one of the user's files (`GET /api/mesh/shares`, `shared-by-me`). */
export interface IShare {
  id: string;
  kind: 'local' | 'ocm';
  grantee: string;
  site: string;
  role: 'editor' | 'viewer';
  path?: string;
}

/** A share given to the user (`GET /api/mesh/received`). */
export interface IReceivedShare {
  id: string;
  kind: 'local' | 'ocm';
  name: string;
  owner: string;
  site: string;
  role: 'editor' | 'viewer';
  state: 'pending' | 'accepted' | 'declined';
}

/** A user of this site found by `GET /api/mesh/users?q=`. */
export interface IFoundUser {
  username: string;
  display_name: string;
  mail: string;
  site: string;
}

/** A site of the mesh (`GET /api/mesh/sites`). */
export interface IMeshSite {
  name: string;
  domain: string;
  local: boolean;
}

/** A CS3 version of a notebook or text file (`GET /api/mesh/versions`). */
export interface IVersion {
  key: string;
  mtime: number;
  size: number;
}
